from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("sessionadmin", "0012_mcp_listing_omitted")]

    operations = [
        migrations.AddField(model_name="apitoken", name="can_read_metrics", field=models.BooleanField(default=False)),
    ]
