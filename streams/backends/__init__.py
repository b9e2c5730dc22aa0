"""One adapter per system the log runs on: ``sqlite`` (embedded) and ``rabbitmq`` (RabbitMQ Streams)."""
