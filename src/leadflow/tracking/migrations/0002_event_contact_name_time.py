"""Index (contact_id, event, timestamp) of resolved, named events, for per-person event tests.

Segment filters ask "did this person perform X (in a window)?" and "how many times?" contact by
contact (membership of known contacts, preview estimates on a sample). With only
(contact_id, timestamp), each such test read every event of the person in the window from the
heap; with the event name in the key it reads that event's rows alone, and PostgreSQL plans
these tests per person where it used to hash every recent event of the workspace (the benchmark
preview's estimate: 2.2 s to 0.5 s at 20M events, docs/benchmarks.md).

Partial, to keep writes cheap on the biggest table: ingest appends events without a contact, so
the HTTP insert path writes no entry here (contact_id IS NOT NULL), and events without a name
(identify, group, alias, unnamed page views) never get one (event <> ''); the worker's update
that resolves a named event's contact adds one entry. On PostgreSQL the index is built
CONCURRENTLY, so building it on a large event log does not block ingest.
"""

from django.db import migrations, models


class AddIndexConcurrentlyOnPostgres(migrations.AddIndex):
    """`AddIndex`, with CREATE/DROP INDEX CONCURRENTLY on PostgreSQL (outside a transaction)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index, concurrently=True)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, concurrently=True)


class Migration(migrations.Migration):

    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [
        ("tracking", "0001_initial"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="event",
            index=models.Index(condition=models.Q(contact__isnull=False) & ~models.Q(event=""),
                               fields=["contact", "event", "timestamp"], name="event_contact_name_time"),
        ),
    ]
