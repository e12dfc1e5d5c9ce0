"""One dialect: protocol (wire models), serving (wire <-> generation), router."""
