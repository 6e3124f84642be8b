"""`daemoneye dashboard`: a model that polls the bus and a Rich view that draws it."""
