"""What happens to a message at the end of DATA, as data: two lists of steps.

``pipelines.INBOUND`` (the MX) and ``pipelines.SUBMISSION`` (587/465) name the
steps in the order they run; each step is a small module with one signature,
``run(tx: Transaction) -> StepResult`` (step.py; ``async`` when it waits for
something), that reads the
transaction's facts, adds its own, and continues, refuses or holds.  run.py is
the loop.  products.py holds what differs between the two listeners before
DATA (MAIL and RCPT) and which list each one runs.

Adding a step (ARC sealing, a new hold reason) is a module here and a line in
pipelines.py; docs/flow.md lists the same steps in the same order (a test
checks it).
"""
