/**
 * The admin listener's connection cap: scrapes, probes and a few operators use a handful of
 * connections (docs/connections.md, "The admin listener"). The schema's default, and the
 * listener's when the serving config has no admin section; here, apart from the schema, so that
 * reading it does not load zod.
 */
export const ADMIN_MAX_CONNECTIONS = 100;
