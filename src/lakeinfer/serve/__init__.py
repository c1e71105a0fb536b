"""``lakeinfer serve``: the model behind the Open Inference Protocol (v2) REST API."""
