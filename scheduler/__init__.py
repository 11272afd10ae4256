"""The scheduler process.

Materialises due occurrences as `due_work`, rescues expired leases, fans out step
events and prunes history.
"""
