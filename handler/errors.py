"""Errors a handler raises; each carries the HTTP status the server answers with."""


class HandlerError(Exception):
    status = 500


class BadRequest(HandlerError):
    """The request body cannot be turned into model input."""

    status = 400


class ModelLoadError(HandlerError):
    """The artifact is not a loadable model; the message says why."""

    status = 400


class UnsupportedMediaType(HandlerError):
    status = 415


class NotAcceptable(HandlerError):
    status = 406
