"""The audit ledger (issue 12): sequence numbers and hashes on audit entries (existing entries
are chained in id order), the chain head, checkpoints, verification runs, the append-only
triggers, and the checkpoint and verification beat tasks.

Append-only in the database:
- PostgreSQL: a trigger refuses every UPDATE and DELETE of an audit entry or checkpoint, except
  a DELETE of entries while the retention purge's transaction has set
  ``SET LOCAL sessionadmin.audit_purge = 'on'`` (``ledger.purge_through``). TRUNCATE is not a row
  operation and is not refused (Django's test flush uses it): give the application a role
  that does not own the tables to rule it out.
- SQLite: triggers refuse every UPDATE; a DELETE of entries only while a row of the purge
  marker table exists (the purge inserts it in its transaction) or once the chain head row is
  gone (a flush, which empties the head table first). SQLite has no roles: anyone who can write
  the file can drop the triggers. The hash chain and the signed checkpoints are what detect
  that; the triggers stop the application's own mistakes.
"""

import json

import django.utils.timezone

from django.conf import settings
from django.db import migrations, models

PG_UP = [
    """
    CREATE OR REPLACE FUNCTION sessionadmin_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'sessionadmin_auditentry'
           AND current_setting('sessionadmin.audit_purge', true) = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'sessionadmin: % on % refused: the audit ledger is append-only', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    """CREATE TRIGGER sessionadmin_audit_append_only BEFORE UPDATE OR DELETE ON sessionadmin_auditentry
       FOR EACH ROW EXECUTE FUNCTION sessionadmin_audit_append_only()""",
    """CREATE TRIGGER sessionadmin_checkpoint_append_only BEFORE UPDATE OR DELETE ON sessionadmin_auditcheckpoint
       FOR EACH ROW EXECUTE FUNCTION sessionadmin_audit_append_only()""",
]
PG_DOWN = [
    "DROP TRIGGER IF EXISTS sessionadmin_audit_append_only ON sessionadmin_auditentry",
    "DROP TRIGGER IF EXISTS sessionadmin_checkpoint_append_only ON sessionadmin_auditcheckpoint",
    "DROP FUNCTION IF EXISTS sessionadmin_audit_append_only()",
]
_REFUSE = "SELECT RAISE(ABORT, 'sessionadmin: {} refused: the audit ledger is append-only')"
SQLITE_UP = [
    f"""CREATE TRIGGER sessionadmin_audit_no_update BEFORE UPDATE ON sessionadmin_auditentry
        BEGIN {_REFUSE.format("UPDATE of an audit entry")}; END""",
    f"""CREATE TRIGGER sessionadmin_audit_no_delete BEFORE DELETE ON sessionadmin_auditentry
        WHEN NOT EXISTS (SELECT 1 FROM sessionadmin_auditpurgemarker)
         AND EXISTS (SELECT 1 FROM sessionadmin_auditchainhead)
        BEGIN {_REFUSE.format("DELETE of an audit entry")}; END""",
    f"""CREATE TRIGGER sessionadmin_checkpoint_no_update BEFORE UPDATE ON sessionadmin_auditcheckpoint
        BEGIN {_REFUSE.format("UPDATE of a checkpoint")}; END""",
    f"""CREATE TRIGGER sessionadmin_checkpoint_no_delete BEFORE DELETE ON sessionadmin_auditcheckpoint
        WHEN EXISTS (SELECT 1 FROM sessionadmin_auditchainhead)
        BEGIN {_REFUSE.format("DELETE of a checkpoint")}; END""",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS sessionadmin_audit_no_update",
    "DROP TRIGGER IF EXISTS sessionadmin_audit_no_delete",
    "DROP TRIGGER IF EXISTS sessionadmin_checkpoint_no_update",
    "DROP TRIGGER IF EXISTS sessionadmin_checkpoint_no_delete",
]


def install_triggers(apps, schema_editor):
    for sql in PG_UP if schema_editor.connection.vendor == "postgresql" else SQLITE_UP:
        schema_editor.execute(sql, params=None)


def remove_triggers(apps, schema_editor):
    for sql in PG_DOWN if schema_editor.connection.vendor == "postgresql" else SQLITE_DOWN:
        schema_editor.execute(sql, params=None)


def chain_existing(apps, schema_editor):
    """Number and chain the entries written before the ledger, in id order (their order of
    insertion), and create the head row."""
    from sessionadmin import ledger_verify as lv

    AuditEntry = apps.get_model("sessionadmin", "AuditEntry")
    AuditChainHead = apps.get_model("sessionadmin", "AuditChainHead")
    seq, prev, batch = 0, lv.GENESIS, []
    for entry in AuditEntry.objects.order_by("id").iterator(chunk_size=2000):
        seq += 1
        entry.seq, entry.prev_hash = seq, prev
        entry.details = json.loads(json.dumps(entry.details))
        doc = lv.entry_document(
            seq=seq,
            prev=prev,
            at=lv.format_time(entry.at),
            actor=entry.actor,
            user_id=entry.user_id,
            org_id=entry.org_id,
            event_type=entry.event_type,
            session_id=str(entry.session_id) if entry.session_id is not None else None,
            details=entry.details,
        )
        entry.entry_hash = prev = lv.entry_hash(doc)
        batch.append(entry)
        if len(batch) >= 2000:
            AuditEntry.objects.bulk_update(batch, ["seq", "prev_hash", "entry_hash"])
            batch = []
    if batch:
        AuditEntry.objects.bulk_update(batch, ["seq", "prev_hash", "entry_hash"])
    AuditChainHead.objects.update_or_create(pk=1, defaults={"length": seq, "head_hash": prev})


TASKS = {
    "sessionadmin: audit checkpoint": (
        "sessionadmin.tasks.audit_checkpoint",
        "Signs the audit ledger's length and head hash (Ed25519) into a checkpoint, in the database and "
        "in SESSIONADMIN_AUDIT_CHECKPOINT_DIR.",
    ),
    "sessionadmin: audit verification": (
        "sessionadmin.tasks.audit_verify",
        "Verifies the whole audit ledger (hashes, links, checkpoints) and records the result.",
    ),
}


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    interval, _ = IntervalSchedule.objects.get_or_create(every=5, period="minutes")
    name = "sessionadmin: audit checkpoint"
    PeriodicTask.objects.get_or_create(
        name=name, defaults={"task": TASKS[name][0], "interval": interval, "kwargs": "{}", "description": TASKS[name][1]}
    )
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute="37", hour="4", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
    )
    name = "sessionadmin: audit verification"
    PeriodicTask.objects.get_or_create(
        name=name, defaults={"task": TASKS[name][0], "crontab": crontab, "kwargs": "{}", "description": TASKS[name][1]}
    )
    from django.utils import timezone

    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def delete_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name__in=list(TASKS)).delete()


class Migration(migrations.Migration):

    dependencies = [
        ('sessionadmin', '0013_apitoken_can_read_metrics'),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.CreateModel(
            name='AuditChainHead',
            fields=[
                ('id', models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False)),
                ('length', models.BigIntegerField(default=0)),
                ('head_hash', models.CharField(max_length=64)),
            ],
        ),
        migrations.CreateModel(
            name='AuditPurgeMarker',
            fields=[
                ('id', models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False)),
            ],
        ),
        migrations.CreateModel(
            name='AuditVerification',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('started_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('triggered_by', models.CharField(max_length=200)),
                ('ok', models.BooleanField(null=True)),
                ('entries_verified', models.BigIntegerField(default=0)),
                ('head_seq', models.BigIntegerField(default=0)),
                ('head_hash', models.CharField(blank=True, max_length=64)),
                ('last_checkpoint', models.BigIntegerField(blank=True, null=True)),
                ('problem', models.CharField(blank=True, max_length=64)),
                ('failing_seq', models.BigIntegerField(blank=True, null=True)),
                ('failing_entry_id', models.BigIntegerField(blank=True, null=True)),
                ('message', models.TextField(blank=True)),
            ],
            options={
                'ordering': ['-started_at', '-id'],
            },
        ),
        migrations.AddField(
            model_name='auditentry',
            name='entry_hash',
            field=models.CharField(default='', max_length=64),
        ),
        migrations.AddField(
            model_name='auditentry',
            name='prev_hash',
            field=models.CharField(default='', max_length=64),
        ),
        migrations.AddField(
            model_name='auditentry',
            name='seq',
            field=models.BigIntegerField(null=True, unique=True),
        ),
        migrations.CreateModel(
            name='AuditCheckpoint',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('length', models.BigIntegerField()),
                ('head_hash', models.CharField(max_length=64)),
                ('at', models.CharField(help_text='UTC time as signed (YYYY-MM-DDTHH:MM:SS.ffffffZ)', max_length=32)),
                ('prev_signature', models.CharField(blank=True, max_length=128)),
                ('signature', models.CharField(max_length=128, unique=True)),
                ('key_id', models.CharField(help_text='First 16 hex digits of the SHA-256 of the raw public key', max_length=16)),
            ],
            options={
                'ordering': ['-id'],
                'indexes': [models.Index(fields=['length'], name='audit_checkpoint_length_idx')],
            },
        ),
        migrations.RunPython(chain_existing, migrations.RunPython.noop),
        migrations.AlterField(model_name="auditentry", name="seq", field=models.BigIntegerField(unique=True)),
        migrations.RunPython(install_triggers, remove_triggers),
        migrations.RunPython(create_schedule, delete_schedule),
    ]
