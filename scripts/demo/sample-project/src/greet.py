"""A greeting, for the demo to edit."""


def greet(name: str) -> str:
    return f"Hello, {name}!"
