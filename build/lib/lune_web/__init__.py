"""The multi-visitor Gradio service: model registry, per-visitor sessions, jobs on the shared model,
form parsing, views and the page. Imports the engine (lune_core), never the deployment (lune_deploy):
app.py builds a WebContext from the deployment and hands it in."""
