"""The embedded broker: kombu's filesystem transport with atomic message files.

A publisher in another process and a consumer here race on one folder, as beat and a worker do
under ``make run``; before sessionadmin.broker, the consumer could take a file that was created
but not yet written and stop with JSONDecodeError.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection
from kombu.utils.json import loads

import sessionadmin.celery  # noqa: F401  (installs the transport for filesystem://)
from sessionadmin.broker import Transport


def connection(folder: Path) -> Connection:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(folder / "control")}
    (folder / "control").mkdir(exist_ok=True)
    return Connection("filesystem://", transport_options=options)


def test_filesystem_urls_use_the_atomic_transport(tmp_path: Path) -> None:
    with connection(tmp_path) as conn:
        assert isinstance(conn.transport, Transport)
        queue = conn.SimpleQueue("q")
        queue.put({"n": 1})
        assert queue.get(timeout=1).payload == {"n": 1}
        assert not list(tmp_path.glob("*.part"))


def test_a_file_being_written_is_left_alone_and_an_unreadable_one_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with connection(tmp_path) as conn:
        channel = conn.default_channel
        (tmp_path / "1_a.q.msg.part").write_bytes(b"")
        with pytest.raises(Empty):
            channel._get("q")
        assert (tmp_path / "1_a.q.msg.part").exists()
        (tmp_path / "2_b.q.msg").write_bytes(b"")
        with caplog.at_level(logging.ERROR, logger="sessionadmin.broker"), pytest.raises(Empty):
            channel._get("q")
        assert "unreadable message file" in caplog.text


def test_a_consumer_racing_a_publisher_in_another_process_reads_every_message(tmp_path: Path) -> None:
    count = 1500
    publisher = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        import sessionadmin.celery
        from kombu import Connection
        options = {{"data_folder_in": {str(tmp_path)!r}, "data_folder_out": {str(tmp_path)!r},
                    "control_folder": {str(tmp_path / "control")!r}}}
        with Connection("filesystem://", transport_options=options) as conn:
            queue = conn.SimpleQueue("race")
            for n in range({count}):
                queue.put({{"n": n, "pad": "x" * 200000}})
        """
    )
    with connection(tmp_path) as conn:
        channel = conn.default_channel
        proc = subprocess.Popen([sys.executable, "-c", publisher])
        seen: set[int] = set()
        try:
            # Poll as fast as we can (a worker polls once a second), to meet files mid-write.
            while len(seen) < count and (proc.poll() is None or list(tmp_path.glob("*.race.msg"))):
                try:
                    message = channel._get("race")
                except Empty:
                    continue
                seen.add(loads(base64.b64decode(message["body"]))["n"])
        finally:
            proc.wait(timeout=120)
        assert proc.returncode == 0
        assert seen == set(range(count))
