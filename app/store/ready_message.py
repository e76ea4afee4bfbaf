"""A batch's Celery message, built inside Redis by the Lua call that releases the batch.

On the Redis broker, kombu keeps a queue's messages as JSON strings in a list named after the
queue (priority 0), and the workers `BRPOP` them. When the job store and the broker are the same
Redis, the store's `release` pushes each released batch's message itself, in the same atomic call
that moves the batch into flight. So the worker that counted a batch's outcome publishes nothing
(`send_task` was a third of a pool process's CPU per batch: docs/benchmarks.md), and no batch can
be lost between its release and its publish. On SQS, or with a broker on another Redis, the
caller publishes the released batches with `send_task` (app/broker/dispatch.py).

The message is Celery's protocol 2 as `send_task` writes it (tests/test_ready_message.py compares
it with one, field by field), except that its ids are `<job_id>.<n>` (n counts the job's releases:
unique, and no uuid generator in Lua) and its body is JSON, not base64 (kombu takes a body with
no `body_encoding` as it is).
"""

from __future__ import annotations

from app.model.wire import RUN_BATCH

# `queue`: the broker list the message goes to; `entry`: a backlog entry, `"<batch_id> <body>"`.
LUA_BATCH_MESSAGE = """
local function batch_message(queue, job_id, entry, n)
  local space = string.find(entry, ' ', 1, true)
  local id = string.sub(entry, 1, space - 1)
  local task_id = cjson.encode(job_id .. '.' .. n)
  local args = cjson.encode({job_id, id, string.sub(entry, space + 1)})
  local body = '[' .. args .. ',{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
  return '{"body":' .. cjson.encode(body) .. ',"content-encoding":"utf-8","content-type":"application/json",'
    .. '"headers":{"lang":"py","task":"RUN_BATCH","id":' .. task_id .. ',"shadow":null,"eta":null,'
    .. '"expires":null,"group":null,"group_index":null,"retries":0,"timelimit":[null,null],'
    .. '"root_id":' .. task_id .. ',"parent_id":null,'
    .. '"argsrepr":' .. cjson.encode("['" .. job_id .. "', '" .. id .. "', ...]") .. ',"kwargsrepr":"{}",'
    .. '"origin":"batchery-store","ignore_result":null,"replaced_task_nesting":0,"stamped_headers":null,'
    .. '"stamps":{}},"properties":{"correlation_id":' .. task_id .. ',"delivery_mode":2,'
    .. '"delivery_info":{"exchange":"","routing_key":' .. cjson.encode(queue) .. '},"priority":0,'
    .. '"delivery_tag":' .. task_id .. '}}'
end
""".replace("RUN_BATCH", RUN_BATCH)
