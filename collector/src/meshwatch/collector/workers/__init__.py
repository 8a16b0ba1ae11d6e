"""Several collector processes behind one set of ports: ``meshwatch-collector --workers N``."""
