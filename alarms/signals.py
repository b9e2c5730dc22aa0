"""The alarms' signal: ``alarm_transition``, sent once a transition is committed (the notifications connect to it).

``alarm_transition.send(sender=Alarm, alarm=<Alarm>, transition=<Transition value: raised, acknowledged, cleared,
shelved, unshelved, reraised>, event=<AlarmEvent>)``, from ``transaction.on_commit`` of the service that made it
(alarms/services.py): a rolled-back transition sends nothing.
"""

from django.dispatch import Signal

alarm_transition = Signal()
