"""Talking to Courier: the async HTTP client, its rate limiter and its retry policy.

``courier`` holds :class:`CourierClient` (one method per endpoint, named as in the official
SDK); ``_http`` its request loop (attempts, retries, error mapping, ``on_retry``);
``models`` the typed, contract-checked answers; ``paging`` the bounds on paging and polling;
``security`` the API-key and header hygiene; ``ratelimit`` the token bucket and adaptive
pacing; ``retry`` which failures are retried and how long to wait. Nothing here knows about
run directories or plans.
"""
