"""Package data of ``twistd ate-demo``: the job file of its lot (``le306426001.xml``)."""
