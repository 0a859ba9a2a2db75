"""Training: transformers' Trainer plus peft, driven by a RunSpec, reporting through a `Reporter`.

Imports only the ML stack and the run spec; nothing here knows about the web server or the database.
"""
