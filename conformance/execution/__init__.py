"""Running checks: profiles, the plan of items, the session, the watched candidate call, and
the executors (inline, thread, child process, supervised worker) with their limits."""
