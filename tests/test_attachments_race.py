"""Two uploads at once by one user, through the real upload view in two daphne processes, that
together pass a limit (the quota, the files per message): one is stored, the other refused,
and nothing of the refused one is left (no row, no stored file). On SQLite and, where it runs
on 127.0.0.1, PostgreSQL (tests/services.py).

Each upload passes the first, unlocked check (chat.attachments.check_limits) before either is
stored: the servers hold each upload there until both have passed it (a rendezvous through
files, set up before daphne starts), so the test does not depend on timing. Only the check
made again under the lock (chat.attachments.save) can then refuse one."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import httpx
import pytest

from tests.live_server import Site
from tests.services import database_url, services  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

# Run in each server before daphne starts: after check_limits passes, say so with a file and
# wait (bounded) until as many uploads as the test sends have said so.
RENDEZVOUS = r"""
import os, time, uuid
import django
django.setup()
from chat import attachments

_checked = attachments.check_limits
_where = os.environ["TEST_RENDEZVOUS"]


def check_limits(user, size):
    _checked(user, size)
    open(os.path.join(_where, uuid.uuid4().hex), "w").close()
    deadline = time.monotonic() + 10
    while len(os.listdir(_where)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)


attachments.check_limits = check_limits
"""

CSRF = secrets.token_hex(16)  # a CSRF secret of the expected length, sent as cookie and header


def make_site(root: Path, database: str | None) -> Site:
    site = Site(
        root,
        env={
            "TEST_RENDEZVOUS": str(root / "rendezvous"),
            "CHAT_ATTACHMENT_QUOTA_BYTES": "3000",
            "CHAT_ATTACHMENTS_PER_MESSAGE": "2",
        },
        database_url=database,
    )
    site.migrate()
    return site


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"race-{request.param}")
    database = request.getfixturevalue("database_url") if request.param == "postgresql" else None
    site = make_site(root, database)
    servers = [site.server(start=False, before_start=RENDEZVOUS) for _ in range(2)]
    for server in servers:
        server.launch()
    for server in servers:
        server.wait_ready()
    yield site
    site.stop()


def upload_at_once(
    site: Site, user: str, files: list[tuple[str, bytes]], waiting: int = 0
) -> list[httpx.Response]:
    """Each file through another server, the requests sent together; `waiting` files uploaded
    and not sent already."""
    rendezvous = Path(site.env["TEST_RENDEZVOUS"])
    rendezvous.mkdir(exist_ok=True)
    for marker in rendezvous.iterdir():
        marker.unlink()
    site.create_user(user, "pw")
    site.shell(
        "from chat import attachments\nfrom django.contrib.auth.models import User\n"
        f"user = User.objects.get(username={user!r})\n"
        f"for n in range({waiting}): attachments.store(user, f'{{n}}.txt', b'x')"
    )
    cookie = site.session_cookie(user)
    answers: list[httpx.Response | BaseException] = [None] * len(files)  # type: ignore[list-item]

    def post(index: int, server, name: str, data: bytes) -> None:
        try:
            cookies = {"sessionid": cookie, "csrftoken": CSRF}
            with httpx.Client(base_url=server.origin, timeout=30, trust_env=False, cookies=cookies) as client:
                answers[index] = client.post(
                    "/attachments/",
                    files={"file": (name, data, "text/plain")},
                    headers={"X-CSRFToken": CSRF, "Origin": server.origin},
                )
        except BaseException as exc:  # seen by the test, not lost in the thread
            answers[index] = exc

    threads = [
        threading.Thread(target=post, args=(index, server, name, data))
        for index, (server, (name, data)) in enumerate(zip(site.servers, files, strict=True))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return answers


def stored(site: Site, user: str) -> tuple[list[dict], list[Path]]:
    rows = site.query(
        "SELECT a.name, a.file FROM chat_attachment a JOIN auth_user u ON u.id = a.owner_id "
        "WHERE u.username = %s ORDER BY a.id",
        user,
    )
    files_dir = site.data_dir / "files"
    user_id = site.query("SELECT id FROM auth_user WHERE username = %s", user)[0]["id"]
    found = sorted((files_dir / str(user_id)).iterdir()) if (files_dir / str(user_id)).exists() else []
    return rows, found


@pytest.mark.parametrize(
    ("user", "sizes", "waiting", "code"),
    [("ann", (2000, 2000), 0, "quota_exceeded"), ("ben", (10, 10), 1, "too_many_files")],
    ids=["quota", "files per message"],
)
def test_two_uploads_at_once_past_a_limit_store_one_and_refuse_the_other_whole(
    site, user, sizes, waiting, code
):
    answers = upload_at_once(site, user, [("a.txt", b"a" * sizes[0]), ("b.txt", b"b" * sizes[1])], waiting)
    assert len(list(Path(site.env["TEST_RENDEZVOUS"]).iterdir())) == 2  # both passed the first check
    assert sorted(a.status_code for a in answers) in ([201, 400], [201, 413])
    accepted = next(a for a in answers if a.status_code == 201).json()
    refused = next(a for a in answers if a.status_code != 201).json()
    assert refused["error"] == code and refused["detail"]
    rows, files = stored(site, user)
    assert [row["name"] for row in rows] == [f"{n}.txt" for n in range(waiting)] + [accepted["name"]]
    assert sorted(site.data_dir / "files" / row["file"] for row in rows) == files
