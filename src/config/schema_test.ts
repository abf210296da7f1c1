import assert from "node:assert/strict";
import { renderSchema, SCHEMA_FILE } from "../../scripts/gen_schema.ts";
import { formatIssues } from "./issues.ts";
import { parseConfigText } from "./load.ts";

const CONFIG_DIR = new URL("../../config/", import.meta.url);

Deno.test("config/ferry.schema.json matches scripts/gen_schema.ts output", async () => {
  const committed = await Deno.readTextFile(SCHEMA_FILE);
  assert.equal(
    committed,
    renderSchema(),
    "config/ferry.schema.json is stale: run deno run --allow-write=config scripts/gen_schema.ts",
  );
});

Deno.test("the JSON schema takes durations as strings with a unit (a bare number only as 0)", () => {
  const schema = JSON.parse(renderSchema());
  const timeout = schema.properties.routes.items.properties.timeout;
  assert.deepEqual(timeout.anyOf, [
    { type: "string", pattern: "^\\d+(\\.\\d+)?(ms|s|m|h)$" },
    { const: 0 },
  ]);
  assert.equal(schema.title, "Ferry configuration");
  assert.equal(schema.$schema, "https://json-schema.org/draft/2020-12/schema");
});

Deno.test("every example config in config/ validates", async () => {
  const examples: string[] = [];
  for await (const entry of Deno.readDir(CONFIG_DIR)) {
    if (entry.isFile && /\.ya?ml$/.test(entry.name)) examples.push(entry.name);
  }
  for (const name of examples.sort()) {
    const file = `config/${name}`;
    const result = parseConfigText(await Deno.readTextFile(new URL(name, CONFIG_DIR)), file);
    assert.ok(result.ok, result.ok ? "" : formatIssues(result.errors));
  }
});
