// The page the live-view tests load: orgo-vnc's ComputerDisplay, unmodified, given the computer's
// `hostname` and `vnc_password` from the query string exactly as the API returns them. Its progress
// is kept in `window.vnc` for the test to read over the DevTools protocol.
import React from "react";
import { createRoot } from "react-dom/client";
import { ComputerDisplay } from "orgo-vnc";

const q = new URLSearchParams(location.search);
window.vnc = { state: "connecting", errors: [], disconnects: 0 };

function Page() {
  return (
    <div id="screen" style={{ width: "100vw", height: "100vh" }}>
      <ComputerDisplay
        hostname={q.get("hostname")}
        password={q.get("pw")}
        scaleViewport={false}
        onConnect={() => { window.vnc.state = "connected"; }}
        onDisconnect={(clean) => { window.vnc.state = "disconnected"; window.vnc.clean = clean; window.vnc.disconnects += 1; }}
        onError={(e) => { window.vnc.errors.push(String(e)); }}
        onReady={(h) => { window.vnc.handle = h; }}
      />
    </div>
  );
}

createRoot(document.getElementById("root")).render(<Page />);
