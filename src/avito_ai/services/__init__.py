"""What the front doors (native API, OpenAI API, forms) share, so routes stay thin."""
