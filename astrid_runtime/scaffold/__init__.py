"""Plugin authoring: `astrid plugin new` scaffolding and the plugin builder."""
