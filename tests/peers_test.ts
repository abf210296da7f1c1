/**
 * A test whose Debian peer is missing says so in one line: the peer, the package and the
 * apt-get command. Checked by running the helper with an empty PATH in a real subprocess.
 */
import assert from "node:assert/strict";
import { DENO, PEER_INSTALL_ALL, requirePeer } from "./helpers.ts";

const HELPERS = new URL("./helpers.ts", import.meta.url).href;

async function requireWithEmptyPath(peer: string) {
  const dir = await Deno.makeTempDir();
  try {
    const out = await new Deno.Command(DENO, {
      args: ["eval", `import { requirePeer } from "${HELPERS}"; await requirePeer("${peer}");`],
      env: { PATH: dir, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    return { code: out.code, stderr: new TextDecoder().decode(out.stderr).trim() };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("a missing peer fails with one line naming its Debian package and the install command", async () => {
  const h2load = await requireWithEmptyPath("h2load");
  assert.notEqual(h2load.code, 0);
  const lines = h2load.stderr.split("\n").filter((l) => l.trim() !== "");
  assert.equal(lines.length, 1, h2load.stderr);
  assert.match(lines[0]!, /"h2load" not found: install Debian package nghttp2-client/);
  assert.match(lines[0]!, /sudo apt-get install -y nghttp2-client\)$/);

  const promtool = await requireWithEmptyPath("promtool");
  assert.match(
    promtool.stderr,
    /install Debian package prometheus \(sudo apt-get install -y prometheus\)/,
  );
});

Deno.test("an installed peer resolves to its executable; README quotes the one install command", async () => {
  assert.match(await requirePeer("curl"), /\/curl$/);
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  assert.ok(readme.includes(PEER_INSTALL_ALL), `README should show: ${PEER_INSTALL_ALL}`);
});
