"""The language server, split by concern (see ``app``): ``create_server(ServerOptions(...))`` and what the CLI needs."""

from ..messages import DOCUMENT_STATE, EVENT, STATUS
from .app import CodeLlamaServer, create_server
from .documents import EditPoint, edit_point
from .state import VERSION, ServerOptions
from .status import BUSY_AFTER_S
from .threads import busy_threads, in_daemon_thread

__all__ = [
    "BUSY_AFTER_S",
    "DOCUMENT_STATE",
    "EVENT",
    "STATUS",
    "VERSION",
    "CodeLlamaServer",
    "EditPoint",
    "ServerOptions",
    "busy_threads",
    "create_server",
    "edit_point",
    "in_daemon_thread",
]
