// Passkeys on twofold's pages: adding one on My Settings, "Use a passkey"
// on the code step and "Sign in with a passkey". Our own file, served by
// the binary under the pages' Content-Security-Policy (no inline script,
// nothing from another host). The forms it posts carry the page's CSRF
// token; the service answers with the API's JSON, or, once signed in,
// with a redirect that sets the session cookie.
"use strict";

(function () {
  async function post(path, fields) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/x-www-form-urlencoded",
        Accept: "application/json",
      },
      body: new URLSearchParams(fields),
    });
    if (response.redirected) {
      window.location.assign(response.url);
      return null;
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error(body.message || "The request failed.");
    }
    return body;
  }

  const status = document.getElementById("passkey-error");

  function say(text) {
    if (status) {
      status.textContent = text;
      status.hidden = false;
    }
  }

  function explain(error) {
    if (error && error.name === "NotAllowedError") {
      return "No passkey was used.";
    }
    return error && error.message ? error.message : "The passkey did not work.";
  }

  function supported(form) {
    const ok =
      window.PublicKeyCredential &&
      PublicKeyCredential.parseCreationOptionsFromJSON &&
      PublicKeyCredential.parseRequestOptionsFromJSON;
    if (!ok) {
      say("This browser can not use passkeys.");
      form.querySelector("button").disabled = true;
    }
    return ok;
  }

  async function assertion(publicKeyJson) {
    const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(publicKeyJson);
    const credential = await navigator.credentials.get({ publicKey: publicKey });
    return JSON.stringify(credential.toJSON());
  }

  // My Settings: "Add a passkey".
  const add = document.getElementById("add-passkey-form");
  if (add && supported(add)) {
    add.addEventListener("submit", async function (event) {
      event.preventDefault();
      const csrf = add.elements.csrf.value;
      try {
        const started = await post("/settings/passkeys/options", { csrf: csrf });
        const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(started.public_key);
        const credential = await navigator.credentials.create({ publicKey: publicKey });
        await post("/settings/passkeys/add", {
          csrf: csrf,
          name: add.elements.name.value,
          registration_id: started.registration_id,
          credential: JSON.stringify(credential.toJSON()),
        });
        window.location.assign("/settings?notice=passkey-added");
      } catch (error) {
        say(explain(error));
      }
    });
  }

  // The code step: "Use a passkey".
  const step = document.getElementById("passkey-step-form");
  if (step && supported(step)) {
    step.addEventListener("submit", async function (event) {
      event.preventDefault();
      const csrf = step.elements.csrf.value;
      try {
        const started = await post("/login/code/passkey/options", { csrf: csrf });
        const fields = { csrf: csrf, credential: await assertion(started.public_key) };
        if (step.elements.remember_device.checked) {
          fields.remember_device = "yes";
        }
        await post("/login/code/passkey", fields);
      } catch (error) {
        say(explain(error));
      }
    });
  }

  // The sign-in page: "Sign in with a passkey".
  const alone = document.getElementById("passkey-sign-in-form");
  if (alone && supported(alone)) {
    alone.addEventListener("submit", async function (event) {
      event.preventDefault();
      const csrf = alone.elements.csrf.value;
      try {
        const started = await post("/login/passkey/options", { csrf: csrf });
        await post("/login/passkey", {
          csrf: csrf,
          challenge_id: started.challenge_id,
          credential: await assertion(started.public_key),
        });
      } catch (error) {
        say(explain(error));
      }
    });
  }
})();
