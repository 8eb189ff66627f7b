"""The audit ledger (issue 12): chained entries under concurrent writers, append-only triggers,
signed checkpoints, tampering found by ``audit_verify`` and by the standalone bundle verifier,
and a purge that keeps verification passing. Runs on SQLite and PostgreSQL alike."""

from __future__ import annotations

import importlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.test import override_settings
from django.urls import reverse

from sessionadmin import audit, ledger, maintenance, tasks
from sessionadmin import ledger_verify as lv
from sessionadmin.models import AuditCheckpoint, AuditEntry, AuditVerification
from tests.base import BaseTestCase, BaseTransactionTestCase, database_url
from tests.test_concurrency import READY_TIMEOUT, StartBarrier, check_ran_together
from tests.test_tasks_worker import WorkerTestCase

REPO = Path(__file__).resolve().parent.parent
MIGRATION = importlib.import_module("sessionadmin.migrations.0014_ledger")
T0 = datetime(2026, 11, 20, 12, 0, 0, 123456, tzinfo=UTC)
SESSION = uuid.UUID("6f1c1b7e-8a55-4b8e-9d1e-6f2a4d7c0a11")


def tamper(sql: str, params: list[Any] | None = None) -> None:
    """Raw SQL as an attacker with database rights would run it: the append-only triggers
    disabled first (PostgreSQL: ALTER TABLE ... DISABLE TRIGGER; SQLite: dropped), restored
    after (the test's transaction rolls everything back anyway)."""
    pg = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        if pg:
            for table in ("sessionadmin_auditentry", "sessionadmin_auditcheckpoint"):
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        else:
            for drop in MIGRATION.SQLITE_DOWN:
                cursor.execute(drop)
        cursor.execute(sql, params or [])
        if pg:
            for table in ("sessionadmin_auditentry", "sessionadmin_auditcheckpoint"):
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        else:
            for create in MIGRATION.SQLITE_UP:
                cursor.execute(create)


def standalone(bundle: Path, *extra: str) -> tuple[int, str, list[str]]:
    """Run tools/verify_audit_bundle.py in a fresh interpreter; returns (exit code, output,
    the modules it imported whose name starts with django or sessionadmin)."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['verify_audit_bundle.py', {str(bundle)!r}, *{list(extra)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / 'tools' / 'verify_audit_bundle.py')!r}, run_name='__main__')\n"
        "    rc = 0\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'sessionadmin'))\n"
        "print('IMPORTED ' + repr(bad))\n"
        "sys.exit(rc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    done = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("IMPORTED "), done.stderr[-2000:]
    imported = eval(lines[-1].removeprefix("IMPORTED "))
    assert done.returncode in (0, 1), done.stderr[-2000:]
    return done.returncode, "\n".join(lines[:-1]), imported


class LedgerTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        # A checkpoint file of this test's own (the database rolls back, a file would not).
        folder = tempfile.mkdtemp(dir=self.workspace_root.parent)
        self.enterContext(override_settings(SESSIONADMIN_AUDIT_CHECKPOINT_DIR=folder))

    def write(self, n: int, *, start: int = 0) -> list[AuditEntry]:
        rows = []
        for i in range(start, start + n):
            with transaction.atomic():
                rows += audit.write(
                    [
                        audit.entry(
                            f"event_{i}",
                            actor="alice",
                            user_id="user-1",
                            org_id="acme",
                            session_id=SESSION if i % 2 else None,
                            details={"i": i, "text": "héllo ✓", "nested": {"b": [1, 2.5], "a": None}},
                            at=T0 + timedelta(seconds=i),
                        )
                    ]
                )
        return rows

    def command(self) -> tuple[bool, str]:
        out = tempfile.SpooledTemporaryFile(mode="w+")
        try:
            call_command("audit_verify", stdout=out)
        except CommandError as exc:
            self.assertEqual(exc.returncode, 1)
            return False, str(exc)
        out.seek(0)
        return True, out.read().strip()

    def export(self) -> Path:
        folder = Path(tempfile.mkdtemp(dir=self.workspace_root.parent))
        bundle = folder / "bundle.jsonl"
        try:  # exports, then verifies (and fails on a tampered ledger)
            call_command("audit_verify", export=str(bundle), stdout=StringIO(), stderr=StringIO())
        except CommandError:
            pass
        return bundle


class ChainTestCase(LedgerTestCase):
    def test_it_numbers_and_chains_each_entry_over_its_canonical_form(self) -> None:
        rows = self.write(3)

        stored = list(AuditEntry.objects.order_by("seq"))
        self.assertEqual([e.seq for e in stored], [1, 2, 3])
        self.assertEqual(stored[0].prev_hash, lv.GENESIS)
        self.assertEqual([e.prev_hash for e in stored[1:]], [e.entry_hash for e in stored[:2]])
        doc = {
            "v": "v1",
            "seq": 2,
            "prev": stored[0].entry_hash,
            "at": "2026-11-20T12:00:01.123456Z",
            "actor": "alice",
            "user_id": "user-1",
            "org_id": "acme",
            "event_type": "event_1",
            "session_id": str(SESSION),
            "details": {"i": 1, "text": "héllo ✓", "nested": {"b": [1, 2.5], "a": None}},
        }
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        import hashlib

        self.assertEqual(stored[1].entry_hash, hashlib.sha256(canonical).hexdigest())
        self.assertEqual(rows[1].entry_hash, stored[1].entry_hash)
        self.assertEqual(ledger.head(), (3, stored[2].entry_hash))

    def test_it_inserts_a_batch_of_500_with_one_lock_and_one_insert(self) -> None:
        self.write(1)
        entries = [audit.entry("bulk", actor="system", details={"n": i}) for i in range(500)]

        # The head UPDATE ... RETURNING, then the INSERT: on PostgreSQL one statement that also
        # moves the head's hash; on SQLite its 999-parameter cap splits it in 6, and the head
        # hash UPDATE follows.
        with transaction.atomic(), self.assertNumQueries(2 if connection.vendor == "postgresql" else 8):
            audit.write(entries)

        self.assertEqual(AuditEntry.objects.count(), 501)
        self.assertTrue(ledger.verify().ok)

    def test_the_database_refuses_update_and_delete_from_the_application(self) -> None:
        self.write(2)
        cp = ledger.checkpoint()

        for attempt in (
            lambda: AuditEntry.objects.filter(seq=1).update(actor="mallory"),
            lambda: AuditEntry.objects.filter(seq=1).delete(),
            lambda: AuditCheckpoint.objects.filter(pk=cp.pk).update(length=1),
            lambda: AuditCheckpoint.objects.filter(pk=cp.pk).delete(),
        ):
            with self.subTest(), self.assertRaisesRegex(DatabaseError, "append-only"), transaction.atomic():
                attempt()
        self.assertEqual(AuditEntry.objects.get(seq=1).actor, "alice")
        self.assertTrue(ledger.verify().ok)


class CheckpointTestCase(LedgerTestCase):
    def test_it_signs_the_head_and_chains_the_signatures(self) -> None:
        self.write(2)
        with self.captureOnCommitCallbacks(execute=True):
            first = ledger.checkpoint(now=T0)
        self.assertIsNone(ledger.checkpoint(now=T0 + timedelta(minutes=5)))  # nothing new
        self.write(1, start=2)
        with self.captureOnCommitCallbacks(execute=True):
            second = ledger.checkpoint(now=T0 + timedelta(minutes=10))

        assert first is not None and second is not None
        self.assertEqual((first.length, second.length), (2, 3))
        self.assertEqual(second.prev_signature, first.signature)
        self.assertEqual(second.head_hash, ledger.head()[1])
        message = lv.checkpoint_message(
            length=3, head=second.head_hash, at="2026-11-20T12:10:00.123456Z", prev_signature=first.signature
        )
        ledger.public_key().verify(bytes.fromhex(second.signature), message)
        in_file = ledger.read_checkpoint_file(ledger.checkpoint_file())
        self.assertEqual(in_file, [ledger.as_verifiable(first), ledger.as_verifiable(second)])

    def test_the_signing_key_file_is_private_and_never_replaced(self) -> None:
        path = Path(tempfile.mkdtemp(dir=self.workspace_root.parent)) / "key.pem"

        self.assertTrue(ledger.write_signing_key(path))
        before = path.read_bytes()
        self.assertFalse(ledger.write_signing_key(path))

        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(path.read_bytes(), before)

    def test_admin_shows_the_ledger_state_and_the_public_key(self) -> None:
        self.write(2)
        ledger.checkpoint()
        ledger.record_verification(triggered_by="test")
        self.bob.is_staff = True
        self.bob.save(update_fields=["is_staff"])
        self.client.force_login(self.bob)

        page = self.client.get(reverse("admin:sessionadmin_auditcheckpoint_changelist"))
        key = self.client.get(reverse("admin:sessionadmin_audit_public_key"))

        self.assertContains(page, '<td id="ledger-length">2</td>', html=False)
        self.assertContains(page, ledger.head()[1])
        self.assertContains(page, "OK: 2 entries verified")
        self.assertContains(page, "BEGIN PUBLIC KEY")
        self.assertEqual(key.content.decode(), ledger.public_key_pem())
        self.assertEqual(self.client.get(reverse("admin:sessionadmin_audit_verify")).status_code, 405)
        self.charlie.is_staff = True  # staff, but no role: may not start a verification
        self.charlie.save(update_fields=["is_staff"])
        self.client.force_login(self.charlie)
        self.assertEqual(self.client.post(reverse("admin:sessionadmin_audit_verify")).status_code, 403)


class TamperingTestCase(LedgerTestCase):
    """Ten entries, a checkpoint at 6, then each kind of tampering: the command and the
    standalone verifier on an export both name the first failing entry and what is wrong."""

    def setUp(self) -> None:
        super().setUp()
        self.rows = self.write(6)
        self.cp = ledger.checkpoint(now=T0 + timedelta(minutes=1))
        self.rows += self.write(4, start=6)
        self.ids = {r.seq: r.pk for r in self.rows}

    def assertReported(self, problem: str, where: str) -> None:
        verdict = ledger.verify()
        self.assertFalse(verdict.ok)
        self.assertEqual(verdict.problem, problem)
        ok, message = self.command()
        self.assertFalse(ok)
        self.assertIn(where, message)
        self.assertIn(problem, message)
        rc, out, imported = standalone(self.export())
        self.assertEqual((rc, out), (1, message))
        self.assertEqual(imported, [])

    def test_intact_ledger_passes_everywhere(self) -> None:
        ok, message = self.command()
        rc, out, imported = standalone(self.export())

        self.assertTrue(ok)
        self.assertRegex(
            message,
            rf"^OK: 10 entries verified, head seq 10 hash [0-9a-f]{{16}}\.\.\., last checkpoint #{self.cp.pk} at length 6",
        )
        self.assertEqual((rc, out, imported), (0, message, []))

    def test_an_edited_detail_is_reported(self) -> None:
        tamper("UPDATE sessionadmin_auditentry SET details = %s WHERE seq = 4", ['{"i": 99}'])
        self.assertReported("changed", f"seq 4 id {self.ids[4]}")

    def test_an_edited_time_is_reported(self) -> None:
        moved = connection.ops.adapt_datetimefield_value(T0 + timedelta(seconds=4, microseconds=1))  # was +4 s
        tamper("UPDATE sessionadmin_auditentry SET at = %s WHERE seq = 5", [moved])
        self.assertReported("changed", f"seq 5 id {self.ids[5]}")

    def test_a_deleted_entry_is_reported(self) -> None:
        tamper("DELETE FROM sessionadmin_auditentry WHERE seq = 3")
        self.assertReported("missing", f"seq 3 missing (the next entry is seq 4 id {self.ids[4]})")

    def test_an_inserted_entry_is_reported(self) -> None:
        # The attacker makes room at seq 4 and inserts an entry whose own hash is right.
        tamper("UPDATE sessionadmin_auditentry SET seq = -seq WHERE seq >= 4")
        tamper("UPDATE sessionadmin_auditentry SET seq = 1 - seq WHERE seq < 0")
        prev = AuditEntry.objects.get(seq=3).entry_hash
        forged = AuditEntry(actor="mallory", event_type="forged", at=T0, details={})
        digest = lv.entry_hash(ledger.document_of(forged, seq=4, prev=prev))
        tamper(
            "INSERT INTO sessionadmin_auditentry"
            " (at, actor, user_id, org_id, event_type, session_id, details, seq, prev_hash, entry_hash)"
            " VALUES (%s, 'mallory', '', '', 'forged', NULL, '{}', 4, %s, %s)",
            [connection.ops.adapt_datetimefield_value(T0), prev, digest],
        )
        forged_id = AuditEntry.objects.get(seq=4).pk
        self.assertReported("inserted", f"seq 4 id {forged_id}")

    def test_two_swapped_entries_are_reported(self) -> None:
        tamper("UPDATE sessionadmin_auditentry SET seq = -1 WHERE seq = 4")
        tamper("UPDATE sessionadmin_auditentry SET seq = 4 WHERE seq = 5")
        tamper("UPDATE sessionadmin_auditentry SET seq = 5 WHERE seq = -1")
        self.assertReported("reordered", f"seq 4 id {self.ids[5]}")

    def test_an_edited_checkpoint_is_reported(self) -> None:
        tamper("UPDATE sessionadmin_auditcheckpoint SET length = 5 WHERE id = %s", [self.cp.pk])
        self.assertReported("checkpoint signature invalid", f"checkpoint #{self.cp.pk}")

    def test_a_rewritten_chain_contradicts_the_checkpoint(self) -> None:
        # A thorough attacker edits entry 2 and recomputes every hash after it: the chain is
        # consistent again, but the signed checkpoint at length 6 says otherwise.
        prev = AuditEntry.objects.get(seq=1).entry_hash
        for entry in AuditEntry.objects.filter(seq__gte=2).order_by("seq"):
            if entry.seq == 2:
                entry.details = {"i": 1000}
            digest = lv.entry_hash(ledger.document_of(entry, seq=entry.seq, prev=prev))
            tamper(
                "UPDATE sessionadmin_auditentry SET details = %s, prev_hash = %s, entry_hash = %s WHERE id = %s",
                [json.dumps(entry.details), prev, digest, entry.pk],
            )
            prev = digest
        self.assertReported("checkpoint contradicted", f"seq 6 id {self.ids[6]}")

    def test_a_truncated_ledger_contradicts_the_checkpoint(self) -> None:
        tamper("DELETE FROM sessionadmin_auditentry WHERE seq >= 6")
        self.assertReported("checkpoint contradicted", f"checkpoint #{self.cp.pk} covers 6 entries")

    def test_a_checkpoint_deleted_from_the_database_is_found_in_the_external_file(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            last = ledger.checkpoint(now=T0 + timedelta(minutes=2))
        assert last is not None
        tamper("DELETE FROM sessionadmin_auditcheckpoint WHERE id = %s", [last.pk])
        self.assertTrue(ledger.verify().ok)  # the database alone cannot tell

        rc, out, _ = standalone(self.export(), "--checkpoints", str(ledger.checkpoint_file()))

        self.assertEqual(rc, 1)
        self.assertIn(f"checkpoint #{last.pk} (length 10) of the external file is missing or altered", out)
        # The command, with and without --record, checks the same file against the database.
        for record in (False, True):
            with self.subTest(record=record), self.assertRaises(CommandError) as ctx:
                call_command("audit_verify", checkpoints=str(ledger.checkpoint_file()), record=record)
            self.assertIn(
                f"checkpoint #{last.pk} (length 10) of the external file is missing or altered in the database",
                str(ctx.exception),
            )
        self.assertFalse(AuditVerification.objects.latest("pk").ok)


class PurgeTestCase(LedgerTestCase):
    def test_a_purge_keeps_its_anchor_and_verification_passes(self) -> None:
        self.write(4)
        ledger.checkpoint(now=T0)
        self.write(2, start=4)
        anchor = ledger.checkpoint(now=T0 + timedelta(minutes=1))
        self.write(3, start=6)  # at T0 + 6 s.. : kept

        deleted, anchor_id = maintenance.purge_audit(older_than=T0 + timedelta(seconds=6), policy={})

        self.assertEqual((deleted, anchor_id), (6, anchor.pk))
        self.assertEqual(AuditEntry.objects.order_by("seq").values_list("seq", flat=True).first(), 7)
        ok, message = self.command()
        self.assertTrue(ok, message)
        self.assertIn("from anchor 6", message)
        rc, out, _ = standalone(self.export())
        self.assertEqual((rc, out), (0, message))
        purged = AuditEntry.objects.filter(event_type="history_purged").order_by("seq")
        self.assertEqual([e.details["through_seq"] for e in purged], [4, 6])

    def test_deleting_the_oldest_entries_without_an_anchor_is_reported(self) -> None:
        rows = self.write(4)
        ledger.checkpoint(now=T0)
        tamper("DELETE FROM sessionadmin_auditentry WHERE seq <= 2")

        ok, message = self.command()

        self.assertFalse(ok)
        self.assertIn(f"seq 2 (and before) missing: no checkpoint anchors the oldest entry seq 3 id {rows[2].pk}", message)


class VerificationRecordTestCase(LedgerTestCase):
    def test_the_recorded_result_says_what_failed(self) -> None:
        rows = self.write(3)
        tamper("UPDATE sessionadmin_auditentry SET actor = 'mallory' WHERE seq = 2")

        run = ledger.record_verification(triggered_by="beat")

        self.assertEqual((run.ok, run.problem, run.failing_seq, run.failing_entry_id), (False, "changed", 2, rows[1].pk))
        self.assertEqual(AuditVerification.objects.get().message, run.message)


class ParallelWritersTestCase(BaseTransactionTestCase):
    """Several processes write single entries and batches of 50 at once: one linear chain, no
    gap, no duplicate, every batch contiguous."""

    def test_concurrent_writers_leave_a_linear_chain(self) -> None:
        processes, writes, batch = 4, 20, 50
        barrier = StartBarrier(self.workspace_root.parent / "barrier")
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.parallel_audit", str(barrier.folder), str(writes), str(batch)],
                cwd=REPO,
                env={
                    **os.environ,
                    "DATABASE_URL": database_url(),
                    "PARALLEL_CREATE_INDEX": str(i),
                    "PARALLEL_CREATE_CHILDREN": str(processes),
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(processes)
        ]
        try:
            barrier.wait_until_ready(children, READY_TIMEOUT)
        finally:
            barrier.release()
        results = []
        for child in children:
            out, err = child.communicate(timeout=300)
            self.assertEqual(child.returncode, 0, err[-2000:])
            results.append(json.loads(out.strip().splitlines()[-1]))
        check_ran_together(results)

        total = processes * (writes // 2) * (1 + batch)
        writes_done = [w for r in results for w in r["writes"]]
        self.assertEqual(sorted(s for w in writes_done for s in w), list(range(1, total + 1)))
        for w in writes_done:
            self.assertEqual(w, list(range(w[0], w[0] + len(w))))  # a batch is contiguous
        for r in results:
            firsts = [w[0] for w in r["writes"]]
            self.assertEqual(firsts, sorted(firsts))  # each child's writes in its own order
        self.assertEqual(ledger.head()[0], total)
        verdict = ledger.verify()
        self.assertTrue(verdict.ok, verdict.message)
        self.assertEqual(verdict.entries, total)


class LedgerWorkerTestCase(WorkerTestCase):
    """The checkpoint task and an auditor's verification, run by a real worker."""

    def test_an_auditor_starts_a_verification_from_the_admin(self) -> None:
        with transaction.atomic():
            audit.write([audit.entry("event", actor="alice", details={"n": 1})])
        tasks.audit_checkpoint.delay()
        cp = self.wait(lambda: AuditCheckpoint.objects.first(), what="a checkpoint")
        self.bob.is_staff = True
        self.bob.save(update_fields=["is_staff"])
        self.client.force_login(self.bob)

        r = self.client.post(reverse("admin:sessionadmin_audit_verify"))

        self.assertRedirects(r, reverse("admin:sessionadmin_auditcheckpoint_changelist"), fetch_redirect_response=False)
        run = self.wait(lambda: AuditVerification.objects.filter(finished_at__isnull=False).first(), what="a verification")
        self.assertEqual((run.ok, run.triggered_by, run.entries_verified, run.last_checkpoint), (True, "admin:bob", 1, cp.pk))
        page = self.client.get(reverse("admin:sessionadmin_auditcheckpoint_changelist"))
        self.assertContains(page, "OK: 1 entries verified")


class MigrationTestCase(BaseTransactionTestCase):
    """Migration 0013 numbers and chains the entries written before the ledger, in id order."""

    def test_it_chains_the_existing_entries(self) -> None:
        from django.db.migrations.executor import MigrationExecutor

        executor = MigrationExecutor(connection)
        executor.migrate([("sessionadmin", "0013_apitoken_can_read_metrics")])
        old = executor.loader.project_state([("sessionadmin", "0013_apitoken_can_read_metrics")]).apps
        OldEntry = old.get_model("sessionadmin", "AuditEntry")
        for i in range(3):
            OldEntry.objects.create(actor="alice", event_type=f"before_{i}", at=T0 + timedelta(seconds=i), details={"i": i})

        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())

        self.assertEqual(
            list(AuditEntry.objects.order_by("seq").values_list("seq", "event_type")),
            [
                (1, "before_0"),
                (2, "before_1"),
                (3, "before_2"),
            ],
        )
        with transaction.atomic():
            audit.write([audit.entry("after", actor="alice")])
        verdict = ledger.verify()
        self.assertTrue(verdict.ok, verdict.message)
        self.assertEqual((verdict.entries, ledger.head()[0]), (4, 4))
        with self.assertRaisesRegex(DatabaseError, "append-only"), transaction.atomic():
            AuditEntry.objects.filter(seq=1).update(actor="mallory")
