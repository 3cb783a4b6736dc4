"""Domain errors raised by the core. Front-ends map them to their own wire errors in one place.

The core speaks in domain words only; AMQP turns ``NotFound`` into reply code 404, an SQS front-end
would turn it into ``AWS.SimpleQueueService.NonExistentQueue``. The message is the text the user sees,
already worded as RabbitMQ words it (for example ``no queue 'q' in vhost '/'``).
"""

from __future__ import annotations


class CoreError(Exception):
    """Base of every domain error; ``str(exc)`` is the reply text."""


class NotFound(CoreError):
    """A named queue, exchange or consumer does not exist (AMQP 404)."""


class AccessRefused(CoreError):
    """The operation is not permitted, e.g. declaring a reserved ``amq.`` name (AMQP 403)."""


class ResourceLocked(CoreError):
    """An exclusive queue or consumer belongs to someone else (AMQP 405)."""


class PreconditionFailed(CoreError):
    """A declaration does not match an existing entity, or an argument is invalid (AMQP 406)."""


class NotAllowed(CoreError):
    """Connection-level refusal, e.g. an unknown vhost (AMQP 530)."""


class NotImplementedFeature(CoreError):
    """The request uses a feature Conveyor refuses, e.g. ``immediate`` (AMQP 540)."""


class ResourceError(CoreError):
    """The server cannot serve the request for lack of a resource (AMQP 506)."""


class CommandInvalid(CoreError):
    """The request makes no sense for the server, e.g. an unknown exchange type (AMQP 503)."""
