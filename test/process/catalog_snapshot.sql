-- test/process/catalog_snapshot.sql -- the xprov extension as the catalogs
-- describe it, as sorted text with no OIDs in it, for comparing two databases
-- (test/process/upgrade.sh: one where CREATE EXTENSION installed the current
-- version, one updated to it from an older version with data in its tables).
--
--	psql -X -At -v ON_ERROR_STOP=1 -f test/process/catalog_snapshot.sql -d DB > DB.snapshot
--
-- One line per fact: "section|object|detail".  Long definitions (functions,
-- views) are one line per source line, "section|object|NNNN|line", so that a
-- diff points at the line that differs.  Lines are ordered by section, object
-- and line number (C collation), never by OID or creation order.
--
-- What it covers: every member of the extension (pg_depend deptype 'e'; its
-- identity from pg_identify_object), and for
--   relations   kind, persistence, owner, reloptions, row security (enabled,
--               forced), ACL, replica identity, access method, whether it has
--               a TOAST table (not its name: pg_toast_<oid>), partitioning;
--   columns     number, name, type, NOT NULL, default, generated, identity,
--               collation, storage, compression, statistics target, options,
--               ACL (dropped columns show as a gap in the numbers; see
--               pg_temp.attopts for the one option left out);
--   constraints name, type, definition, deferrability, validation (also on
--               domains);
--   indexes     pg_get_indexdef (name and definition), flags, options;
--   triggers    pg_get_triggerdef and enabled state, except internal ones
--               (foreign-key triggers, named after OIDs; their constraint is
--               listed);
--   policies    name, command, permissive, roles, USING and WITH CHECK;
--   rules       other than a view's _RETURN;
--   views       pg_get_viewdef (options such as security_invoker are the
--               relation's reloptions);
--   statistics  extended statistics objects on member tables;
--   functions   pg_get_functiondef (aggregates: their signature), owner, ACL,
--               SECURITY DEFINER, proconfig, volatility, leakproof, parallel,
--               strictness, cost, rows, kind, language;
--   sequences   type, start, increment, bounds, cache, cycle, owning column
--               (not their current value: that is data);
--   types       kind, owner, ACL, enum labels, domain base/default/NOT NULL,
--               composite attributes;
--   comments    on members, their columns, and their indexes, constraints,
--               triggers, policies and rules;
--   init privs  pg_init_privs of members and their columns;
--   extension   version, owner, schema, relocatable, extconfig (as names,
--               each with its extcondition);
--   schema      xprov's owner, ACL and comment; default privileges in it or
--               of xprov_* roles;
--   database    the current database's ACL (a GRANT ... ON DATABASE made by
--               an update script would show here);
--   roles       xprov_* roles: attributes, settings, comments, memberships.
--               Roles are cluster-wide, so two databases of one cluster
--               always agree on these lines: they are here to be seen, and
--               for comparisons across clusters.
-- Not covered: data, statistics (reltuples, ...), sequence values, OIDs and
-- names made of them, tablespaces other than the default.
--
-- Temporary helper functions only (pg_temp): the snapshot writes nothing to
-- the database's own objects, and can run inside a transaction that is then
-- rolled back.

\set ON_ERROR_STOP 1
\set QUIET on
SET client_min_messages = warning;
-- every name comes out schema-qualified (regclass, regprocedure, viewdefs)
SET search_path = pg_catalog;
SET extra_float_digits = 0;
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';

-- an ACL as sorted text; NULL (the owner's defaults) differs from {} (nothing)
CREATE FUNCTION pg_temp.acl(a aclitem[]) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN a IS NULL THEN 'default'
	ELSE '{' || array_to_string(ARRAY(SELECT x::text FROM unnest(a) x ORDER BY x::text COLLATE "C"), ',') || '}' END $$;
-- a text array as sorted text (reloptions, proconfig, ...)
CREATE FUNCTION pg_temp.opts(a text[]) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN a IS NULL THEN '-'
	ELSE '{' || array_to_string(ARRAY(SELECT x FROM unnest(a) x ORDER BY x COLLATE "C"), ',') || '}' END $$;
-- column options without pg_attver: this server build stamps every column
-- it creates with pg_attver=<the WAL position at the time>, which differs
-- between any two creations of the same column and says nothing about it
CREATE FUNCTION pg_temp.attopts(a text[]) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT pg_temp.opts(nullif(ARRAY(SELECT x FROM unnest(a) x WHERE x NOT LIKE 'pg\_attver=%'), '{}')) $$;
-- one line: newlines written as \n
CREATE FUNCTION pg_temp.flat(t text) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT coalesce(replace(replace(t, E'\r', '\r'), E'\n', '\n'), '-') $$;
CREATE FUNCTION pg_temp.role(r oid) RETURNS text
LANGUAGE sql STABLE
AS $$ SELECT CASE WHEN r = 0 THEN 'public' ELSE coalesce(pg_get_userbyid(r), 'none') END $$;

WITH ext AS (
	SELECT e.* FROM pg_extension e WHERE e.extname = 'xprov'
), members AS (
	SELECT d.classid, d.objid, d.objsubid
	  FROM pg_depend d, ext
	 WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
), rels AS (
	SELECT c.oid::regclass::text AS name, c.*
	  FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
), procs AS (
	SELECT p.oid::regprocedure::text AS name, p.*
	  FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
), types AS (
	SELECT format_type(t.oid, NULL) AS name, t.*
	  FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
), idx AS (
	SELECT i.*, ic.oid::regclass::text AS name, r.name AS relname, ic.reloptions
	  FROM pg_index i JOIN rels r ON r.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid
), cons AS (
	SELECT co.*, coalesce(r.name, format_type(co.contypid, NULL)) AS objname
	  FROM pg_constraint co
	  LEFT JOIN rels r ON r.oid = co.conrelid
	 WHERE r.oid IS NOT NULL OR co.contypid IN (SELECT oid FROM types)
), trigs AS (
	SELECT t.*, r.name AS relname
	  FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid
	 WHERE NOT t.tgisinternal
), pols AS (
	SELECT p.*, r.name AS relname
	  FROM pg_policy p JOIN rels r ON r.oid = p.polrelid
), rules AS (
	SELECT w.*, r.name AS relname
	  FROM pg_rewrite w JOIN rels r ON r.oid = w.ev_class
	 WHERE w.rulename <> '_RETURN'
), xroles AS (
	SELECT a.* FROM pg_authid a WHERE a.rolname LIKE 'xprov\_%'
), facts (section, object, n, detail) AS (
	-- the extension itself
	SELECT 'extension', e.extname::text, 0,
		   format('version=%s owner=%s schema=%s relocatable=%s', e.extversion, pg_temp.role(e.extowner),
				  e.extnamespace::regnamespace, e.extrelocatable)
	  FROM ext e
	UNION ALL
	SELECT 'extconfig', c.cfg::regclass::text, 0, format('condition=%L', c.cond)
	  FROM ext e, unnest(e.extconfig, e.extcondition) AS c(cfg, cond)
	UNION ALL
	-- every member, whatever its class (also the classes described no further below)
	SELECT 'member', o.type || ' ' || o.identity, 0, ''
	  FROM members m, pg_identify_object(m.classid, m.objid, m.objsubid) o
	UNION ALL
	-- the schema
	SELECT 'schema', n.nspname::text, 0,
		   format('owner=%s acl=%s', pg_temp.role(n.nspowner), pg_temp.acl(n.nspacl))
	  FROM pg_namespace n WHERE n.nspname = 'xprov'
	UNION ALL
	SELECT 'default_acl', coalesce(d.defaclnamespace::regnamespace::text, 'all schemas'), 0,
		   format('role=%s objtype=%s acl=%s', pg_temp.role(d.defaclrole), d.defaclobjtype, pg_temp.acl(d.defaclacl))
	  FROM pg_default_acl d
	 WHERE d.defaclnamespace = 'xprov'::regnamespace OR d.defaclrole IN (SELECT oid FROM xroles)
	UNION ALL
	SELECT 'database', 'current', 0, format('acl=%s', pg_temp.acl(d.datacl))
	  FROM pg_database d WHERE d.datname = current_database()
	UNION ALL
	-- relations
	SELECT 'relation', r.name, 0,
		   format('kind=%s persistence=%s owner=%s options=%s rls=%s force_rls=%s acl=%s replident=%s am=%s toast=%s partition=%s partkey=%s',
				  r.relkind, r.relpersistence, pg_temp.role(r.relowner), pg_temp.opts(r.reloptions),
				  r.relrowsecurity, r.relforcerowsecurity, pg_temp.acl(r.relacl), r.relreplident,
				  coalesce((SELECT a.amname FROM pg_am a WHERE a.oid = r.relam), '-'), r.reltoastrelid <> 0,
				  r.relispartition, coalesce(pg_get_partkeydef(r.oid), '-'))
	  FROM rels r
	UNION ALL
	SELECT 'column', r.name, a.attnum,
		   format('%s type=%s notnull=%s default=%s generated=%s identity=%s collation=%s storage=%s compression=%s stattarget=%s options=%s acl=%s',
				  a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
				  coalesce(pg_temp.flat(pg_get_expr(ad.adbin, ad.adrelid)), '-'),
				  nullif(a.attgenerated, ''), nullif(a.attidentity, ''),
				  CASE WHEN a.attcollation = 0 THEN '-' ELSE (SELECT quote_ident(cl.collname) FROM pg_collation cl WHERE cl.oid = a.attcollation) END,
				  a.attstorage, nullif(a.attcompression, ''), a.attstattarget, pg_temp.attopts(a.attoptions),
				  pg_temp.acl(a.attacl))
	  FROM rels r
	  JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
	  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
	 WHERE r.relkind <> 'S'
	UNION ALL
	SELECT 'constraint', c.objname, 0,
		   format('%s type=%s def=%s deferrable=%s deferred=%s validated=%s local=%s inherits=%s',
				  c.conname, c.contype, pg_temp.flat(pg_get_constraintdef(c.oid)), c.condeferrable, c.condeferred,
				  c.convalidated, c.conislocal, c.coninhcount)
	  FROM cons c
	UNION ALL
	SELECT 'index', i.relname, 0,
		   format('%s unique=%s primary=%s exclusion=%s immediate=%s clustered=%s valid=%s ready=%s live=%s replident=%s options=%s',
				  pg_get_indexdef(i.indexrelid), i.indisunique, i.indisprimary, i.indisexclusion, i.indimmediate,
				  i.indisclustered, i.indisvalid, i.indisready, i.indislive, i.indisreplident,
				  pg_temp.opts(i.reloptions))
	  FROM idx i
	UNION ALL
	SELECT 'trigger', t.relname, 0, format('%s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled)
	  FROM trigs t
	UNION ALL
	SELECT 'policy', p.relname, 0,
		   format('%s cmd=%s permissive=%s roles={%s} using=%s check=%s', p.polname, p.polcmd, p.polpermissive,
				  (SELECT string_agg(pg_temp.role(x), ',' ORDER BY pg_temp.role(x)) FROM unnest(p.polroles) x),
				  pg_temp.flat(pg_get_expr(p.polqual, p.polrelid)),
				  pg_temp.flat(pg_get_expr(p.polwithcheck, p.polrelid)))
	  FROM pols p
	UNION ALL
	SELECT 'rule', w.relname, 0, format('%s enabled=%s', pg_temp.flat(pg_get_ruledef(w.oid)), w.ev_enabled)
	  FROM rules w
	UNION ALL
	SELECT 'view', r.name, l.n::integer, l.line
	  FROM rels r, regexp_split_to_table(pg_get_viewdef(r.oid, true), E'\n') WITH ORDINALITY AS l(line, n)
	 WHERE r.relkind IN ('v', 'm')
	UNION ALL
	SELECT 'statistics', r.name, 0,
		   format('%s kinds=%s columns=%s target=%s', s.stxname, s.stxkind, s.stxkeys, s.stxstattarget)
	  FROM pg_statistic_ext s JOIN rels r ON r.oid = s.stxrelid
	UNION ALL
	-- sequences
	SELECT 'sequence', r.name, 0,
		   format('type=%s start=%s increment=%s min=%s max=%s cache=%s cycle=%s owned_by=%s',
				  format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache,
				  s.seqcycle,
				  coalesce((SELECT d.refobjid::regclass::text || '.' || quote_ident(a.attname) || ' (' || d.deptype::text || ')'
							  FROM pg_depend d
							  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
							 WHERE d.classid = 'pg_class'::regclass AND d.objid = r.oid
							   AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')), '-'))
	  FROM rels r JOIN pg_sequence s ON s.seqrelid = r.oid
	UNION ALL
	-- functions and procedures
	SELECT 'function', p.name, 0,
		   format('kind=%s language=%s owner=%s acl=%s secdef=%s config=%s volatile=%s leakproof=%s parallel=%s strict=%s cost=%s rows=%s returns=%s',
				  p.prokind, (SELECT l.lanname FROM pg_language l WHERE l.oid = p.prolang), pg_temp.role(p.proowner),
				  pg_temp.acl(p.proacl), p.prosecdef, pg_temp.opts(p.proconfig), p.provolatile, p.proleakproof,
				  p.proparallel, p.proisstrict, p.procost, p.prorows, format_type(p.prorettype, NULL))
	  FROM procs p
	UNION ALL
	SELECT 'functiondef', p.name, l.n::integer, l.line
	  FROM procs p, regexp_split_to_table(pg_get_functiondef(p.oid), E'\n') WITH ORDINALITY AS l(line, n)
	 WHERE p.prokind <> 'a'
	UNION ALL
	-- types
	SELECT 'type', t.name, 0,
		   format('type=%s category=%s owner=%s acl=%s notnull=%s default=%s base=%s',
				  t.typtype, t.typcategory, pg_temp.role(t.typowner), pg_temp.acl(t.typacl), t.typnotnull,
				  pg_temp.flat(t.typdefault),
				  CASE WHEN t.typbasetype = 0 THEN '-' ELSE format_type(t.typbasetype, t.typtypmod) END)
	  FROM types t
	UNION ALL
	SELECT 'type_enum', t.name, row_number() OVER (PARTITION BY t.oid ORDER BY e.enumsortorder)::integer, e.enumlabel::text
	  FROM types t JOIN pg_enum e ON e.enumtypid = t.oid
	UNION ALL
	SELECT 'type_attribute', t.name, a.attnum,
		   format('%s type=%s collation=%s', a.attname, format_type(a.atttypid, a.atttypmod),
				  CASE WHEN a.attcollation = 0 THEN '-' ELSE (SELECT quote_ident(cl.collname) FROM pg_collation cl WHERE cl.oid = a.attcollation) END)
	  FROM types t JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
	 WHERE t.typrelid <> 0
	UNION ALL
	-- comments: on members (and their columns), and on the parts of member tables
	SELECT 'comment', pg_describe_object(d.classoid, d.objoid, d.objsubid), 0, pg_temp.flat(d.description)
	  FROM pg_description d
	 WHERE (d.classoid, d.objoid) IN (SELECT classid, objid FROM members)
		OR (d.classoid = 'pg_class'::regclass AND d.objoid IN (SELECT indexrelid FROM idx))
		OR (d.classoid = 'pg_constraint'::regclass AND d.objoid IN (SELECT oid FROM cons))
		OR (d.classoid = 'pg_trigger'::regclass AND d.objoid IN (SELECT oid FROM trigs))
		OR (d.classoid = 'pg_policy'::regclass AND d.objoid IN (SELECT oid FROM pols))
		OR (d.classoid = 'pg_rewrite'::regclass AND d.objoid IN (SELECT oid FROM rules))
		OR (d.classoid = 'pg_namespace'::regclass AND d.objoid = 'xprov'::regnamespace)
	UNION ALL
	-- the privileges pg_dump treats as the extension's own
	SELECT 'init_privs', pg_describe_object(i.classoid, i.objoid, i.objsubid), 0,
		   format('privtype=%s privs=%s', i.privtype, pg_temp.acl(i.initprivs))
	  FROM pg_init_privs i
	 WHERE (i.classoid, i.objoid) IN (SELECT classid, objid FROM members)
		OR (i.classoid = 'pg_namespace'::regclass AND i.objoid = 'xprov'::regnamespace)
	UNION ALL
	-- roles (cluster-wide)
	SELECT 'role', r.rolname::text, 0,
		   format('super=%s inherit=%s createrole=%s createdb=%s login=%s replication=%s bypassrls=%s connlimit=%s valid_until=%s password=%s',
				  r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin, r.rolreplication,
				  r.rolbypassrls, r.rolconnlimit, coalesce(r.rolvaliduntil::text, '-'), r.rolpassword IS NOT NULL)
	  FROM xroles r
	UNION ALL
	SELECT 'role_setting', pg_temp.role(s.setrole), 0,
		   format('database=%s config=%s',
				  CASE s.setdatabase WHEN 0 THEN 'all' WHEN (SELECT oid FROM pg_database WHERE datname = current_database())
				  THEN 'current' ELSE 'other' END, pg_temp.opts(s.setconfig))
	  FROM pg_db_role_setting s
	 WHERE s.setrole IN (SELECT oid FROM xroles)
	UNION ALL
	SELECT 'role_comment', r.rolname::text, 0, pg_temp.flat(d.description)
	  FROM xroles r JOIN pg_shdescription d ON d.classoid = 'pg_authid'::regclass AND d.objoid = r.oid
	UNION ALL
	SELECT 'role_member', pg_temp.role(m.roleid), 0,
		   format('member=%s admin=%s grantor=%s', pg_temp.role(m.member), m.admin_option, pg_temp.role(m.grantor))
	  FROM pg_auth_members m
	 WHERE m.roleid IN (SELECT oid FROM xroles) OR m.member IN (SELECT oid FROM xroles)
)
SELECT section || '|' || object || '|' || CASE WHEN n > 0 THEN lpad(n::text, 4, '0') || '|' ELSE '' END || detail
  FROM facts
 ORDER BY section COLLATE "C", object COLLATE "C", n, detail COLLATE "C";
