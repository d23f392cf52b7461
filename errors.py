"""The project's error types: what a client did wrong, told once and mapped to HTTP only in `apis/`."""


class InputError(Exception):
    """Bad client input (an unreadable image, a forbidden URL, a limit exceeded).

    `status` is the HTTP status the edge answers with (400, 413, 415 or 422); `detail` is the one-line
    message the client sees.
    """

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail

    def __reduce__(self):  # keep both fields when pickled between server and worker processes
        return (type(self), (self.status, self.detail))
