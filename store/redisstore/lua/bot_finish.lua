-- This script ends the delivery of the head of a session's chatbot queue
-- (docs/design.md §9). KEYS[1] the queue; ARGV the head entry as claimed.
-- Answers how many messages are left queued, or -1 when the head is no
-- longer that entry: another claim ended it (this one's lease ran out),
-- and scheduled what follows.
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then return -1 end
redis.call('LPOP', KEYS[1])
return redis.call('LLEN', KEYS[1])
