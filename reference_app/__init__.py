"""The counter app: NiceGUI pages running inside a branch node's process.

`python -m reference_app --data DIR` starts the node and the pages on one event loop
(see app.py); the counter (counter.py) is the default page.
"""
