"""Push → durable inbox: the transaction endpoint stores every event before the 200 (web), the
worker claims stored events and runs them in lanes (worker), finished rows are pruned
(housekeeping). What an event means is the chat package's business."""
