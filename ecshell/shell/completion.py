"""Tab completion of targets in IPython: what every frontend asks for, with Jedi on.

::

    In [1]: %on web-<Tab>          # web-*  web-0  web-1  (never Python names)
    In [2]: %on role=<Tab>         # role=db  role=web
    In [3]: cluster["we<Tab>       # web-*  web-0  web-1  (Cluster._ipython_key_completions_)

prompt_toolkit and Jupyter's ``complete_request`` both call
``IPCompleter.completions()``, which merges every matcher's answer with
Jedi's. A ``complete_command`` hook cannot keep Jedi out (IPython exempts
Jedi from its suppression), so the targets come from a context matcher
(IPython's matcher API v2) that asks for every other matcher to be
suppressed whenever it has words to offer.
"""

from IPython.core.completer import SimpleCompletion, context_matcher

from .session import current_piece

#: Ahead of IPython's own matchers: the first matcher that suppresses the others wins.
PRIORITY = 100


class TargetMatcher:
    """Completes the target argument of %on, %%on, %ready, %terminate, %put and %get."""

    def __init__(self, session):
        self.session = session

    @context_matcher(priority=PRIORITY, identifier="ecshell.targets")
    def match(self, context):
        """IPython's matcher API v2: the target words for the line the cursor is on."""
        before = context.text_until_cursor
        words = self.session.complete(before) or []
        return {
            "completions": [SimpleCompletion(word, type="target") for word in words],
            "matched_fragment": current_piece(before) if words else context.token,
            "suppress": bool(words),
            "ordered": True,
        }
