-- revocation_epoch: the epoch of the revocation counter, created with it if either is
-- missing (see ensure_epoch).
-- KEYS[1] revocation_epoch string
-- ARGV: prefix, epoch candidate
return ensure_epoch(ARGV[1], ARGV[2])
