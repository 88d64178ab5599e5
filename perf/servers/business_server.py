"""Two realistic business MCP servers for perf/token_economy.py: a CRM (`crm`) and a help desk
(`helpdesk`), over stdio, on the official Python SDK (FastMCP / MCPServer).

    python business_server.py crm        # 22 tools: customers, contacts, deals, activities
    python business_server.py helpdesk   # 20 tools: tickets, comments, SLAs, knowledge base

Their tools have the JSON Schemas such servers publish (typed arguments with descriptions,
enums, bounds, optional filters and pagination) and read from a fixed data set generated from
a seed, so every run answers the same: 40 customers (ids C-1001 … C-1040) in segments and
regions, and tickets for them (ids T-5001 …). Tools that would change data answer as if they
had, without changing the data set.
"""

from __future__ import annotations

import random
import sys
from typing import Annotated, Literal, Optional

from pydantic import Field

try:  # mcp >= 2
    from mcp.server import MCPServer as _Server
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP as _Server

SEGMENTS = ("enterprise", "mid-market", "smb", "public-sector")
REGIONS = ("EMEA", "NA", "APAC", "LATAM")
INDUSTRIES = ("software", "retail", "manufacturing", "healthcare", "finance", "logistics", "energy", "media")
NAMES = (
    "Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Wonka", "Hooli", "Vandelay", "Soylent",
    "Tyrell", "Cyberdyne", "Aperture", "Massive Dynamic", "Oscorp", "Gringotts", "Monarch", "Nakatomi",
    "Virtucon", "Dunder", "Bluth", "Pied Piper", "Gekko", "Prestige", "Sterling", "Duff", "Krusty",
    "Ollivander", "Pym", "Rekall", "Sirius", "Spacely", "Cogswell", "Zorg", "Weyland", "Yoyodyne",
    "Omni", "Halcyon", "Abstergo", "Blue Sun",
)
SUFFIXES = ("Corp", "GmbH", "Ltd", "SA", "Inc", "BV", "AG", "plc")
PRIORITIES = ("low", "normal", "high", "urgent")
STATUSES = ("open", "pending", "on_hold", "solved", "closed")
TOPICS = (
    ("SSO login fails after IdP certificate rotation", "authentication"),
    ("Invoice PDF shows the wrong VAT rate", "billing"),
    ("Webhook deliveries delayed by several minutes", "integrations"),
    ("Export to CSV times out for large reports", "reporting"),
    ("User provisioning via SCIM creates duplicates", "authentication"),
    ("Dashboard widgets load slowly in Firefox", "performance"),
    ("API rate limit errors during nightly sync", "integrations"),
    ("Request to add a sandbox environment", "account"),
    ("Data retention policy question for audit", "compliance"),
    ("Mobile app crashes when attaching photos", "mobile"),
)


def _data() -> tuple[list[dict], list[dict]]:
    rng = random.Random(20261201)
    customers, tickets = [], []
    ticket_id = 5001
    for i, name in enumerate(NAMES):
        cid = f"C-{1001 + i}"
        customers.append({
            "id": cid,
            "name": f"{name} {SUFFIXES[i % len(SUFFIXES)]}",
            "segment": SEGMENTS[(i * 7 + i // 4) % len(SEGMENTS)],
            "region": REGIONS[(i * 3 + i // 5) % len(REGIONS)],
            "industry": INDUSTRIES[i % len(INDUSTRIES)],
            "annual_contract_value": rng.randrange(12, 900) * 1000,
            "currency": "EUR" if i % 3 == 0 else "USD",
            "owner": f"U-{200 + i % 9}",
            "health_score": rng.randrange(35, 100),
            "renewal_date": f"2027-{1 + i % 12:02d}-{1 + (i * 5) % 28:02d}",
            "created_at": f"20{19 + i % 7}-{1 + i % 12:02d}-15T09:00:00Z",
            "tags": sorted({rng.choice(("strategic", "at-risk", "expansion", "reference", "beta")) for _ in range(2)}),
        })
        for _ in range(rng.randrange(2, 11)):
            title, category = rng.choice(TOPICS)
            tickets.append({
                "id": f"T-{ticket_id}",
                "customer_id": cid,
                "subject": title,
                "category": category,
                "status": rng.choices(STATUSES, weights=(5, 2, 1, 3, 4))[0],
                "priority": rng.choices(PRIORITIES, weights=(3, 5, 3, 1))[0],
                "assignee": f"A-{300 + rng.randrange(12)}",
                "created_at": f"2026-{1 + rng.randrange(11):02d}-{1 + rng.randrange(28):02d}T{rng.randrange(24):02d}:00:00Z",
                "sla_breached": rng.random() < 0.15,
                "description": (f"Customer {name} reports: {title.lower()}. Seen by several users since the last "
                                f"release; steps to reproduce and logs attached. Business impact: "
                                f"{rng.choice(('blocking a team', 'workaround exists', 'cosmetic', 'month-end close at risk'))}."),
            })
            ticket_id += 1
    return customers, tickets


CUSTOMERS, TICKETS = _data()
BY_ID = {c["id"]: c for c in CUSTOMERS}

CustomerId = Annotated[str, Field(description="Customer id, e.g. `C-1001`.", pattern=r"^C-\d{4}$")]
TicketId = Annotated[str, Field(description="Ticket id, e.g. `T-5001`.", pattern=r"^T-\d{4}$")]
Segment = Literal["enterprise", "mid-market", "smb", "public-sector"]
Region = Literal["EMEA", "NA", "APAC", "LATAM"]
Limit = Annotated[int, Field(description="Page size.", ge=1, le=200)]
Cursor = Annotated[Optional[str], Field(description="Opaque cursor from a previous page's `next_cursor`.")]
Priority = Literal["low", "normal", "high", "urgent"]
Status = Literal["open", "pending", "on_hold", "solved", "closed"]


def _page(items: list[dict], limit: int, cursor: str | None, key: str) -> dict:
    start = int(cursor or 0)
    page = items[start:start + limit]
    nxt = str(start + limit) if start + limit < len(items) else None
    return {key: page, "total": len(items), "next_cursor": nxt}


def crm_server() -> _Server:
    mcp = _Server("acme-crm", instructions="CRM of record: customers, contacts, deals and activities.")

    @mcp.tool()
    def search_customers(
        query: Annotated[Optional[str], Field(description="Words matched against name, industry and tags.")] = None,
        segment: Annotated[Optional[Segment], Field(description="Only customers of this segment.")] = None,
        region: Annotated[Optional[Region], Field(description="Only customers in this sales region.")] = None,
        min_contract_value: Annotated[Optional[int], Field(description="Minimum annual contract value, in the account currency.", ge=0)] = None,
        owner: Annotated[Optional[str], Field(description="Account owner user id, e.g. `U-201`.")] = None,
        limit: Limit = 25,
        cursor: Cursor = None,
    ) -> dict:
        """Search customer accounts by text and filters. Returns id, name, segment, region, industry,
        annual contract value, owner and health score of each match, sorted by name."""
        found = [c for c in CUSTOMERS
                 if (segment is None or c["segment"] == segment)
                 and (region is None or c["region"] == region)
                 and (min_contract_value is None or c["annual_contract_value"] >= min_contract_value)
                 and (owner is None or c["owner"] == owner)
                 and (not query or query.lower() in " ".join([c["name"], c["industry"], *c["tags"]]).lower())]
        fields = ("id", "name", "segment", "region", "industry", "annual_contract_value", "currency", "owner", "health_score")
        slim = [{k: c[k] for k in fields} for c in sorted(found, key=lambda c: c["name"])]
        return _page(slim, limit, cursor, "customers")

    @mcp.tool()
    def get_customer(customer_id: CustomerId,
                     include: Annotated[list[Literal["contacts", "deals", "tags", "billing"]], Field(description="Related records to embed.")] = []) -> dict:
        """Get one customer account with all its fields (and related records when asked)."""
        return BY_ID.get(customer_id) or {"error": f"no customer {customer_id}"}

    @mcp.tool()
    def create_customer(
        name: Annotated[str, Field(description="Legal name of the company.", min_length=2, max_length=200)],
        segment: Segment,
        region: Region,
        industry: Annotated[str, Field(description="Industry, free text (e.g. `retail`).")],
        owner: Annotated[str, Field(description="Account owner user id.")],
        annual_contract_value: Annotated[Optional[int], Field(description="Expected annual contract value.", ge=0)] = None,
        currency: Literal["USD", "EUR", "GBP", "JPY"] = "USD",
        website: Annotated[Optional[str], Field(description="Company website URL.")] = None,
    ) -> dict:
        """Create a customer account. Returns the new account with its id."""
        return {"id": "C-9999", "name": name, "segment": segment, "region": region, "created": True}

    @mcp.tool()
    def update_customer(
        customer_id: CustomerId,
        name: Annotated[Optional[str], Field(description="New legal name.")] = None,
        segment: Optional[Segment] = None,
        region: Optional[Region] = None,
        owner: Annotated[Optional[str], Field(description="New account owner user id.")] = None,
        annual_contract_value: Annotated[Optional[int], Field(ge=0, description="New annual contract value.")] = None,
        tags: Annotated[Optional[list[str]], Field(description="Replace the account's tags.")] = None,
    ) -> dict:
        """Update fields of a customer account; fields left out are unchanged."""
        return {"id": customer_id, "updated": True}

    @mcp.tool()
    def merge_customers(
        survivor_id: Annotated[str, Field(description="Account that remains.")],
        duplicate_ids: Annotated[list[str], Field(description="Accounts merged into the survivor and deleted.", min_length=1)],
        prefer: Literal["survivor", "newest", "most_complete"] = "survivor",
    ) -> dict:
        """Merge duplicate customer accounts into one; contacts, deals and activities move to the survivor."""
        return {"id": survivor_id, "merged": duplicate_ids}

    @mcp.tool()
    def list_contacts(customer_id: CustomerId,
                      role: Annotated[Optional[Literal["decision_maker", "champion", "user", "billing", "technical"]], Field(description="Only contacts with this role.")] = None,
                      limit: Limit = 50, cursor: Cursor = None) -> dict:
        """List the contacts (people) of a customer account, with their role, title, email and phone."""
        people = [{"id": f"P-{customer_id[2:]}{n}", "customer_id": customer_id, "name": f"Contact {n}", "role": "user",
                   "title": "Engineer", "email": f"c{n}@example.com"} for n in range(3)]
        return _page(people, limit, cursor, "contacts")

    @mcp.tool()
    def get_contact(contact_id: Annotated[str, Field(description="Contact id, e.g. `P-10010`.")]) -> dict:
        """Get one contact with all its fields, consent flags and recent activity summary."""
        return {"id": contact_id, "name": "Contact", "email": "c@example.com"}

    @mcp.tool()
    def create_contact(
        customer_id: CustomerId,
        name: Annotated[str, Field(description="Full name.")],
        email: Annotated[str, Field(description="Work email address.")],
        role: Literal["decision_maker", "champion", "user", "billing", "technical"] = "user",
        title: Annotated[Optional[str], Field(description="Job title.")] = None,
        phone: Annotated[Optional[str], Field(description="Phone number in E.164 format.")] = None,
        marketing_consent: Annotated[bool, Field(description="Whether the contact agreed to marketing email.")] = False,
    ) -> dict:
        """Add a contact to a customer account."""
        return {"id": "P-99990", "customer_id": customer_id, "name": name}

    @mcp.tool()
    def update_contact(contact_id: Annotated[str, Field(description="Contact id.")],
                       email: Optional[str] = None, title: Optional[str] = None, phone: Optional[str] = None,
                       role: Optional[Literal["decision_maker", "champion", "user", "billing", "technical"]] = None,
                       marketing_consent: Optional[bool] = None) -> dict:
        """Update fields of a contact; fields left out are unchanged."""
        return {"id": contact_id, "updated": True}

    @mcp.tool()
    def list_deals(
        customer_id: Annotated[Optional[str], Field(description="Only deals of this customer.")] = None,
        stage: Annotated[Optional[Literal["prospecting", "qualification", "proposal", "negotiation", "closed_won", "closed_lost"]], Field(description="Only deals in this stage.")] = None,
        owner: Annotated[Optional[str], Field(description="Deal owner user id.")] = None,
        close_before: Annotated[Optional[str], Field(description="Expected close date before this day (YYYY-MM-DD).")] = None,
        limit: Limit = 25, cursor: Cursor = None,
    ) -> dict:
        """List sales opportunities (deals) with amount, stage, probability and expected close date."""
        return _page([], limit, cursor, "deals")

    @mcp.tool()
    def get_deal(deal_id: Annotated[str, Field(description="Deal id, e.g. `D-3001`.")]) -> dict:
        """Get one deal with its line items, stage history and next step."""
        return {"id": deal_id, "stage": "proposal"}

    @mcp.tool()
    def create_deal(
        customer_id: CustomerId,
        name: Annotated[str, Field(description="Short name of the opportunity.")],
        amount: Annotated[float, Field(description="Total amount in the account currency.", gt=0)],
        expected_close: Annotated[str, Field(description="Expected close date (YYYY-MM-DD).")],
        stage: Literal["prospecting", "qualification", "proposal", "negotiation"] = "prospecting",
        probability: Annotated[Optional[int], Field(description="Win probability in percent.", ge=0, le=100)] = None,
        products: Annotated[list[str], Field(description="Product SKUs on the deal.")] = [],
    ) -> dict:
        """Open a new deal for a customer."""
        return {"id": "D-9999", "customer_id": customer_id, "name": name}

    @mcp.tool()
    def update_deal_stage(
        deal_id: Annotated[str, Field(description="Deal id.")],
        stage: Literal["prospecting", "qualification", "proposal", "negotiation", "closed_won", "closed_lost"],
        reason: Annotated[Optional[str], Field(description="Why (required for closed_lost).")] = None,
    ) -> dict:
        """Move a deal to another pipeline stage; closing it records the reason and the date."""
        return {"id": deal_id, "stage": stage}

    @mcp.tool()
    def get_pipeline_summary(
        owner: Annotated[Optional[str], Field(description="Only deals of this owner.")] = None,
        region: Optional[Region] = None,
        quarter: Annotated[Optional[str], Field(description="Fiscal quarter, e.g. `2027-Q1`.")] = None,
    ) -> dict:
        """Totals of the sales pipeline by stage: count, amount and weighted amount."""
        return {"stages": []}

    @mcp.tool()
    def list_activities(
        customer_id: CustomerId,
        kind: Annotated[Optional[Literal["call", "email", "meeting", "task", "note"]], Field(description="Only this kind.")] = None,
        since: Annotated[Optional[str], Field(description="Only activities after this time (RFC 3339).")] = None,
        limit: Limit = 25, cursor: Cursor = None,
    ) -> dict:
        """List the activity timeline of a customer: calls, emails, meetings, tasks and notes."""
        return _page([], limit, cursor, "activities")

    @mcp.tool()
    def log_activity(
        customer_id: CustomerId,
        kind: Literal["call", "email", "meeting", "task", "note"],
        subject: Annotated[str, Field(description="One-line subject.")],
        body: Annotated[Optional[str], Field(description="Details, Markdown.")] = None,
        contact_ids: Annotated[list[str], Field(description="Contacts involved.")] = [],
        due: Annotated[Optional[str], Field(description="Due date of a task (YYYY-MM-DD).")] = None,
    ) -> dict:
        """Record an activity on a customer's timeline."""
        return {"id": "AC-1", "logged": True}

    @mcp.tool()
    def get_account_health(customer_id: CustomerId,
                           window_days: Annotated[int, Field(description="Days of usage and support data considered.", ge=7, le=365)] = 90) -> dict:
        """Health score of an account with its drivers: product usage, support load, NPS, billing."""
        c = BY_ID.get(customer_id, {})
        return {"customer_id": customer_id, "health_score": c.get("health_score"), "drivers": {}}

    @mcp.tool()
    def list_segments() -> dict:
        """The customer segments and sales regions, with account counts."""
        return {"segments": list(SEGMENTS), "regions": list(REGIONS)}

    @mcp.tool()
    def assign_owner(customer_ids: Annotated[list[str], Field(description="Accounts to reassign.", min_length=1)],
                     owner: Annotated[str, Field(description="New owner user id.")],
                     notify: Annotated[bool, Field(description="Email the old and new owners.")] = True) -> dict:
        """Reassign accounts to another owner (territory changes)."""
        return {"reassigned": customer_ids, "owner": owner}

    @mcp.tool()
    def list_users(role: Annotated[Optional[Literal["sales", "success", "support", "admin"]], Field(description="Only users of this role.")] = None,
                   active: bool = True) -> dict:
        """List CRM users (account owners, success managers) with id, name, role and team."""
        return {"users": [{"id": f"U-{200 + n}", "name": f"User {n}", "role": "sales"} for n in range(9)]}

    @mcp.tool()
    def list_notes(customer_id: CustomerId, limit: Limit = 20, cursor: Cursor = None) -> dict:
        """List free-form notes on a customer account, newest first."""
        return _page([], limit, cursor, "notes")

    @mcp.tool()
    def add_note(customer_id: CustomerId,
                 text: Annotated[str, Field(description="Note text, Markdown.", max_length=10000)],
                 pinned: Annotated[bool, Field(description="Pin the note to the top of the account.")] = False) -> dict:
        """Add a note to a customer account."""
        return {"id": "N-1", "customer_id": customer_id}

    return mcp


def helpdesk_server() -> _Server:
    mcp = _Server("acme-helpdesk", instructions="Support desk: tickets, SLAs and the knowledge base.")

    @mcp.tool()
    def list_tickets(
        customer_id: Annotated[Optional[str], Field(description="Only tickets of this customer (e.g. `C-1001`).")] = None,
        status: Annotated[Optional[Status], Field(description="Only tickets in this status.")] = None,
        priority: Annotated[Optional[Priority], Field(description="Only tickets of this priority.")] = None,
        assignee: Annotated[Optional[str], Field(description="Only tickets assigned to this agent (e.g. `A-301`).")] = None,
        category: Annotated[Optional[str], Field(description="Only tickets of this category (e.g. `billing`).")] = None,
        created_after: Annotated[Optional[str], Field(description="Only tickets created after this time (RFC 3339).")] = None,
        sort: Literal["created_at", "-created_at", "priority", "-priority"] = "-created_at",
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> dict:
        """List support tickets matching the filters, with subject, status, priority, assignee,
        category, SLA state and description."""
        found = [t for t in TICKETS
                 if (customer_id is None or t["customer_id"] == customer_id)
                 and (status is None or t["status"] == status)
                 and (priority is None or t["priority"] == priority)
                 and (assignee is None or t["assignee"] == assignee)
                 and (category is None or t["category"] == category)
                 and (created_after is None or t["created_at"] > created_after)]
        order = {"low": 0, "normal": 1, "high": 2, "urgent": 3}
        key = (lambda t: order[t["priority"]]) if "priority" in sort else (lambda t: t["created_at"])
        found.sort(key=key, reverse=sort.startswith("-"))
        return _page(found, limit, cursor, "tickets")

    @mcp.tool()
    def get_ticket(ticket_id: TicketId,
                   include_comments: Annotated[bool, Field(description="Embed the comment thread.")] = False) -> dict:
        """Get one ticket with all its fields (and its comments when asked)."""
        return next((t for t in TICKETS if t["id"] == ticket_id), {"error": f"no ticket {ticket_id}"})

    @mcp.tool()
    def create_ticket(
        customer_id: Annotated[str, Field(description="Customer the ticket is for.")],
        subject: Annotated[str, Field(description="One-line summary.", max_length=200)],
        description: Annotated[str, Field(description="What happened, steps to reproduce, impact. Markdown.")],
        priority: Priority = "normal",
        category: Annotated[Optional[str], Field(description="Category, e.g. `billing`, `integrations`.")] = None,
        requester_email: Annotated[Optional[str], Field(description="Who reported it.")] = None,
        tags: Annotated[list[str], Field(description="Tags to add.")] = [],
    ) -> dict:
        """Open a new support ticket."""
        return {"id": "T-9999", "status": "open", "customer_id": customer_id}

    @mcp.tool()
    def update_ticket(
        ticket_id: TicketId,
        status: Optional[Status] = None,
        priority: Optional[Priority] = None,
        category: Optional[str] = None,
        subject: Annotated[Optional[str], Field(max_length=200, description="New subject.")] = None,
    ) -> dict:
        """Change fields of a ticket; fields left out are unchanged."""
        return {"id": ticket_id, "updated": True}

    @mcp.tool()
    def assign_ticket(ticket_id: TicketId,
                      assignee: Annotated[Optional[str], Field(description="Agent id; omit to pick by round robin in `group`.")] = None,
                      group: Annotated[Optional[Literal["tier1", "tier2", "billing", "engineering"]], Field(description="Support group.")] = None) -> dict:
        """Assign a ticket to an agent or a support group."""
        return {"id": ticket_id, "assignee": assignee or "A-301"}

    @mcp.tool()
    def add_ticket_comment(
        ticket_id: TicketId,
        body: Annotated[str, Field(description="Comment text, Markdown.")],
        public: Annotated[bool, Field(description="Visible to the customer (false: internal note).")] = True,
        attachments: Annotated[list[str], Field(description="Upload tokens of files to attach.")] = [],
    ) -> dict:
        """Add a public reply or an internal note to a ticket."""
        return {"id": "CM-1", "ticket_id": ticket_id}

    @mcp.tool()
    def list_ticket_comments(ticket_id: TicketId, limit: Limit = 50, cursor: Cursor = None) -> dict:
        """List a ticket's comments (public replies and internal notes), oldest first."""
        return _page([], limit, cursor, "comments")

    @mcp.tool()
    def close_ticket(ticket_id: TicketId,
                     resolution: Annotated[str, Field(description="How it was solved.")],
                     resolution_code: Literal["fixed", "workaround", "duplicate", "not_a_bug", "no_response"] = "fixed") -> dict:
        """Solve and close a ticket with a resolution."""
        return {"id": ticket_id, "status": "closed"}

    @mcp.tool()
    def reopen_ticket(ticket_id: TicketId, reason: Annotated[str, Field(description="Why it is reopened.")]) -> dict:
        """Reopen a solved or closed ticket."""
        return {"id": ticket_id, "status": "open"}

    @mcp.tool()
    def escalate_ticket(ticket_id: TicketId,
                        level: Annotated[int, Field(description="Escalation level (1: team lead, 2: engineering, 3: incident).", ge=1, le=3)],
                        reason: Annotated[str, Field(description="Why it needs escalation.")]) -> dict:
        """Escalate a ticket; level 3 opens an incident and pages the on-call engineer."""
        return {"id": ticket_id, "escalated": level}

    @mcp.tool()
    def merge_tickets(target_id: TicketId,
                      source_ids: Annotated[list[str], Field(description="Tickets merged into the target and closed.", min_length=1)]) -> dict:
        """Merge duplicate tickets into one; comments move to the target."""
        return {"id": target_id, "merged": source_ids}

    @mcp.tool()
    def tag_ticket(ticket_id: TicketId,
                   add: Annotated[list[str], Field(description="Tags to add.")] = [],
                   remove: Annotated[list[str], Field(description="Tags to remove.")] = []) -> dict:
        """Add or remove tags on a ticket."""
        return {"id": ticket_id}

    @mcp.tool()
    def list_sla_policies() -> dict:
        """The SLA policies: first-response and resolution targets per priority and plan."""
        return {"policies": []}

    @mcp.tool()
    def get_sla_status(ticket_id: TicketId) -> dict:
        """SLA state of a ticket: targets, time left or overrun, pauses."""
        return {"id": ticket_id, "breached": False}

    @mcp.tool()
    def search_knowledge_base(
        query: Annotated[str, Field(description="Words to search for.")],
        locale: Annotated[str, Field(description="Article language, BCP 47 (e.g. `en-US`).")] = "en-US",
        section: Annotated[Optional[str], Field(description="Only this section of the help center.")] = None,
        limit: Annotated[int, Field(ge=1, le=50, description="How many articles.")] = 10,
    ) -> dict:
        """Search help-center articles; returns titles, snippets and ids."""
        return {"articles": []}

    @mcp.tool()
    def get_article(article_id: Annotated[str, Field(description="Article id.")],
                    locale: Annotated[str, Field(description="Language, BCP 47.")] = "en-US") -> dict:
        """Get a help-center article's full body (Markdown)."""
        return {"id": article_id, "body": ""}

    @mcp.tool()
    def list_agents(group: Annotated[Optional[Literal["tier1", "tier2", "billing", "engineering"]], Field(description="Only agents of this group.")] = None,
                    online: Annotated[Optional[bool], Field(description="Only agents online now.")] = None) -> dict:
        """List support agents with group, current load and availability."""
        return {"agents": [{"id": f"A-{300 + n}", "group": "tier1"} for n in range(12)]}

    @mcp.tool()
    def get_queue_stats(group: Annotated[Optional[Literal["tier1", "tier2", "billing", "engineering"]], Field(description="Only this group.")] = None,
                        window_hours: Annotated[int, Field(ge=1, le=720, description="Hours of history.")] = 24) -> dict:
        """Queue statistics: open tickets by priority, median first response, SLA breaches."""
        return {"open": sum(t["status"] == "open" for t in TICKETS)}

    @mcp.tool()
    def list_macros(category: Annotated[Optional[str], Field(description="Only macros of this category.")] = None) -> dict:
        """List reply macros (canned responses with field changes)."""
        return {"macros": []}

    @mcp.tool()
    def apply_macro(ticket_id: TicketId, macro_id: Annotated[str, Field(description="Macro id.")],
                    dry_run: Annotated[bool, Field(description="Show the result without applying it.")] = False) -> dict:
        """Apply a macro to a ticket: adds its reply and changes its fields."""
        return {"id": ticket_id, "macro": macro_id}

    return mcp


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "crm"
    server = {"crm": crm_server, "helpdesk": helpdesk_server}[which]()
    server.run()  # stdio
