"""kombu's ``filesystem://`` transport, made safe for several processes.

kombu writes a message by creating its file and then writing it; a consumer in another process
that lists the folder between the two moves the still-empty file away, fails to parse it, and
the worker stops with "Unrecoverable error: JSONDecodeError" (seen under ``make run`` when beat
published while the worker polled). Here a message is written under a name consumers skip and
renamed into place, which is atomic within the folder; and a file that still cannot be parsed
(written by another program) is logged and dropped instead of stopping the worker.

``sessionadmin.celery`` installs this as the transport of ``filesystem://`` URLs.
"""

from __future__ import annotations

import logging
import os
import uuid
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".part"  # kombu takes only names ending in ".<queue>.msg"


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]  # kombu names it two ways
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + PARTIAL_SUFFIX
        try:
            with open(partial, "wb") as fh:
                fh.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        try:
            return super()._get(queue)
        except ValueError as exc:  # JSONDecodeError: the file is already moved away
            logger.error("dropped an unreadable message file of queue %s: %s", queue, exc)
            raise Empty() from None


class Transport(filesystem.Transport):
    Channel = Channel
