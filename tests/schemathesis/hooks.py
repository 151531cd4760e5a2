"""schemathesis hooks for tests/schemathesis.sh.

The stateful phase infers a link from `POST /v1/producers` (`producer_id`, `epoch`: JSON
integers) to the `Producer-Id` / `Producer-Epoch` request headers and passes the integers
through unchanged, which the HTTP library refuses before anything is sent ("Header part
must be of type str or bytes"). Headers are text on the wire: send them as their decimal
text, as any HTTP client would.
"""

import schemathesis


@schemathesis.hook
def before_call(ctx, case, kwargs):
    headers = case.headers or {}
    for name, value in list(headers.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            headers[name] = str(value)
