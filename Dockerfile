# One image for every hubsched service (web, worker, beat, flower, reference hubs); docker-compose.yml picks the command.
# Production mode by default: the container refuses to start without SECRET_KEY, ALLOWED_HOSTS and
# HUBSCHED_SECRETS_KEY in its environment (README, Deploying).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HUBSCHED_ENV=production
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
# The static files whitenoise serves, hashed and compressed, made at build (root-owned, read-only to the app).
# Production settings need these three to load; collectstatic uses none of them: placeholders that live only in
# this RUN's shell, not in the image.
RUN SECRET_KEY=collectstatic-only ALLOWED_HOSTS=localhost HUBSCHED_SECRETS_KEY=collectstatic-only \
    CELERY_BROKER_URL=memory:// python manage.py collectstatic --noinput -v 0 \
 && useradd --create-home hubsched && mkdir -p /app/var && chown hubsched /app/var
USER hubsched
EXPOSE 8000
CMD ["python", "-m", "uvicorn", "hubsched.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--lifespan", "off"]
