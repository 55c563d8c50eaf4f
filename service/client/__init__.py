"""adapterctl: the command-line client, and the small client library it and the demo use."""
