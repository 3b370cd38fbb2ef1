"""State that several Parley processes share: ephemeral keys, per-key session leases, tokens
per minute, and the directory of which node holds which call.

`local.LocalShared` keeps it in the process (one process, no Redis: today's behaviour);
`redis_shared.RedisShared` keeps it in Redis for many workers and machines.  Nothing here is
touched per audio frame or per delta: a session's open and close, a key's mint and check, a
call's control, tokens once a second, and one heartbeat per node every few seconds.
"""
