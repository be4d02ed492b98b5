"""Transports that take a whole broadcast and fan it out for the controller.

The direct path (:mod:`ecshell.engine`) runs one Attempt per machine over
the controller's own pooled SSH connections. A fan-out transport instead
gets every machine routed to it at once and hands them to an engine that
fans out itself: :mod:`.ssm` (AWS Systems Manager Run Command) and
:mod:`.tree` (ClusterShell's tree mode, through gateway machines). Either
way the caller gets the same ResultSet; :mod:`.base` says how, and
:mod:`.routes` which machine goes which way.
"""
