-- Changes the subscription dispatcher numbered before its cursor could pass them: committed
-- while an older transaction anywhere in the cluster still ran, so above the feed's horizon.
-- Dispatching them at once keeps notifications flowing during a long transaction; these rows
-- keep them from being numbered a second time once the cursor reaches them, and are deleted
-- as it passes. Written in the dispatcher's transaction, with the cursor and the events.
CREATE TABLE subscription_dispatched_early (
    txid  bigint NOT NULL,
    seq   bigint NOT NULL,
    PRIMARY KEY (txid, seq)
);
