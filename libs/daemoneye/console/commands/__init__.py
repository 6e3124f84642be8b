"""One module per `daemoneye` verb; each has add_parser(sub, parent) and a handler."""
