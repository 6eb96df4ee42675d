"""Inbox event → Letta → reply: the router decides who an event is for (addressing), who joins
and leaves (memberships, encryption), and hands messages to a turn, which asks Letta and posts
the answer (streaming, poster). incoming/parts/content are the pure texts in between."""
