"""Drop the single-column index on events.contact_id: `event_contact_time` (contact_id, timestamp)
starts with the same column and serves every lookup by contact, so it only cost writes (224 MB at
20M events; docs/benchmarks.md)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('contacts', '0002_company_owner_contact_conversion_probability_and_more'),
        ('tracking', '0002_event_contact_name_time'),
    ]

    operations = [
        migrations.AlterField(
            model_name='event',
            name='contact',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='events', to='contacts.contact'),
        ),
    ]
