"""Units a user's own package would provide, written against ``bitnas.api`` only (no edit to bitnas)."""
