/* mucosa viewer: signing in with an access token (a server with --token, or with users) and signing out.
 *
 * A 401 shows the sign-in form in place of the case, with the upload area and the case list hidden until the
 * server accepts a token; a token it refuses is said to be rejected. This tab keeps the token (sessionStorage)
 * and sends it as a header; one given in the address (/?token=TOKEN) is read once and taken out of the address
 * bar. Sign out forgets it.
 */
"use strict";

const TOKEN_KEY = "mucosa-token";

/* The token of the address (?token=), else this tab's; the address keeps its other parts, not the token. */
function readToken() {
  const url = new URL(window.location.href);
  const given = url.searchParams.get("token");
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }
  S.token = given || sessionStorage.getItem(TOKEN_KEY);
}

function forgetToken() {
  S.token = null;
  S.me = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("signout").hidden = true;
  $("me").textContent = "";
}

/* The server answered 401: the sign-in form (focused when it appears), "token rejected" when a token was sent. */
function needSignIn() {
  const rejected = Boolean(S.token);
  forgetToken();
  const appears = !document.body.classList.contains("signed-out");
  document.body.classList.add("signed-out");
  $("signin").hidden = false;
  if (rejected) {
    errorLine("signin-error", "Token rejected: the server does not accept this token. Check it and sign in again.");
  }
  if (appears || rejected) $("signin-token").focus();
}

async function submitSignIn(e) {
  e.preventDefault();
  const field = $("signin-token");
  const token = field.value.trim();
  if (!token) { errorLine("signin-error", "Enter your access token."); field.focus(); return; }
  errorLine("signin-error", "");
  S.token = token;
  $("signin-submit").disabled = true;
  try {
    await api("/v1/me");
  } catch (error) {
    if (S.token) errorLine("signin-error", `Could not sign in: ${error.message}`);  // else: rejected, said so
    S.token = null;
    field.select();
    return;
  } finally {
    $("signin-submit").disabled = false;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  field.value = "";
  document.body.classList.remove("signed-out");
  $("signin").hidden = true;
  await init();
  $("main").focus();
}

function signOut() {
  forgetToken();
  closeCase();
  $("cases").textContent = "";
  if (window.location.hash) history.replaceState(history.state, "", window.location.pathname);
  init();  // a server that needs a token asks for one again
}

function setupSignIn() {
  $("signin-form").addEventListener("submit", submitSignIn);
  $("signout").addEventListener("click", signOut);
}
