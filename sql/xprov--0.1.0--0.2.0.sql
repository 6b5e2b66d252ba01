/* xprov--0.1.0--0.2.0.sql: roles, row-level security and hardened functions */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION xprov UPDATE TO '0.2.0'" to load this file. \quit

