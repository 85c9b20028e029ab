"""The leader's duties, one module each; :mod:`squall.scheduler.service` lists them, and
:class:`squall.scheduler.duty.DutyRunner` runs them."""
