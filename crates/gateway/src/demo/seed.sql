-- =============================================================================
-- phigate demo dataset: crates/gateway/src/demo/seed.sql
--
-- SYNTHETIC DATA ONLY. Every name, SSN, MRN, phone number, address, e-mail,
-- insurance id, diagnosis and lab value below is generated from arithmetic on
-- generate_series() indices. None of it describes a real person. Phone numbers
-- use the fictional 555 exchange, e-mails use the reserved example.com /
-- example.org / example.net domains, and SSN areas are limited to 100-665.
--
-- DETERMINISTIC: no random(), no now()/current_date, no sequences. Pseudo-
-- random choices come from md5() of a tag plus the row index (pg_temp.h), and
-- every timestamp is a fixed UTC literal plus an hour/minute offset, so the
-- data is identical on every run and under any session TimeZone.
--
-- Target: PostgreSQL 15, empty database "clinic", schema "public". Run once on
-- a fresh database. Pure SQL (no psql meta-commands); safe to send as a single
-- simple-query string. Creates no permanent objects besides the five tables and
-- their indexes (the hash helper lives in pg_temp and is dropped at the end).
--
-- Rows: departments 12, patients 10,000, encounters 30,000 (3 per patient),
--       prescriptions 20,000 (2 of every 3 encounters), lab_results 40,000
--       (4 per patient).
--
-- PHI planted in encounters.notes (for redaction tests):
--   id % 7  = 0  -> note contains the patient's own full name ("First Last")
--   id % 11 = 0  -> note contains the patient's phone, "(NNN) 555-NNNN"
--   id % 13 = 0  -> note contains the patient's SSN, "NNN-NN-NNNN"
-- =============================================================================

-- Deterministic 32-bit hash of (tag, n): first 8 hex digits of md5, unsigned.
CREATE FUNCTION pg_temp.h(tag text, n bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $fn$ SELECT ('x' || substr(md5(tag || ':' || n::text), 1, 8))::bit(32)::bigint $fn$;

-- -----------------------------------------------------------------------------
-- Schema
-- -----------------------------------------------------------------------------
CREATE TABLE public.departments (
    id    integer PRIMARY KEY,
    name  text    NOT NULL UNIQUE,
    floor integer NOT NULL
);

CREATE TABLE public.patients (
    id                  integer     PRIMARY KEY,
    mrn                 text        NOT NULL UNIQUE,
    first_name          text        NOT NULL,
    last_name           text        NOT NULL,
    ssn                 text        NOT NULL UNIQUE CHECK (ssn ~ '^\d{3}-\d{2}-\d{4}$'),
    date_of_birth       date        NOT NULL,
    sex                 char(1)     NOT NULL CHECK (sex IN ('F', 'M', 'X')),
    email               text        NOT NULL,
    phone               text        NOT NULL,
    address             text        NOT NULL,
    city                text        NOT NULL,
    state               char(2)     NOT NULL,
    zip                 text        NOT NULL CHECK (zip ~ '^\d{5}$'),
    insurance_member_id text        NOT NULL,
    created_at          timestamptz NOT NULL
);

CREATE TABLE public.encounters (
    id             integer     PRIMARY KEY,
    patient_id     integer     NOT NULL REFERENCES public.patients (id),
    admitted_at    timestamptz NOT NULL,
    discharged_at  timestamptz,
    department_id  integer     NOT NULL REFERENCES public.departments (id),
    diagnosis_code text        NOT NULL,
    attending      text        NOT NULL,
    notes          text        NOT NULL,
    CHECK (discharged_at IS NULL OR discharged_at > admitted_at)
);

CREATE TABLE public.prescriptions (
    id            integer     PRIMARY KEY,
    patient_id    integer     NOT NULL REFERENCES public.patients (id),
    encounter_id  integer     NOT NULL REFERENCES public.encounters (id),
    drug          text        NOT NULL,
    dose          text        NOT NULL,
    prescribed_at timestamptz NOT NULL
);

CREATE TABLE public.lab_results (
    id         integer       PRIMARY KEY,
    patient_id integer       NOT NULL REFERENCES public.patients (id),
    test       text          NOT NULL,
    value      numeric(10,2) NOT NULL,
    unit       text          NOT NULL,
    taken_at   timestamptz   NOT NULL
);

-- -----------------------------------------------------------------------------
-- departments (non-PHI)
-- -----------------------------------------------------------------------------
INSERT INTO public.departments (id, name, floor) VALUES
    ( 1, 'Emergency Medicine',       1),
    ( 2, 'Cardiology',               3),
    ( 3, 'Endocrinology',            4),
    ( 4, 'Pulmonology',              3),
    ( 5, 'Gastroenterology',         4),
    ( 6, 'Orthopedics',              2),
    ( 7, 'Neurology',                5),
    ( 8, 'Psychiatry',               6),
    ( 9, 'Obstetrics & Gynecology',  2),
    (10, 'Nephrology',               5),
    (11, 'Internal Medicine',        4),
    (12, 'Infectious Disease',       6);

-- -----------------------------------------------------------------------------
-- patients (10,000)
-- -----------------------------------------------------------------------------
INSERT INTO public.patients (id, mrn, first_name, last_name, ssn, date_of_birth, sex,
                             email, phone, address, city, state, zip,
                             insurance_member_id, created_at)
WITH
names AS (
    SELECT
        -- 0..29 are female-typical, 30..59 male-typical (drives "sex").
        ARRAY['Mary','Patricia','Jennifer','Linda','Elizabeth','Barbara','Susan','Jessica',
              'Sarah','Karen','Nancy','Lisa','Margaret','Sandra','Ashley','Emily','Donna',
              'Michelle','Carol','Amanda','Maria','Sofia','Aisha','Mei','Priya','Fatima',
              'Olivia','Emma','Chloe','Zoe',
              'James','John','Robert','Michael','William','David','Richard','Joseph',
              'Thomas','Charles','Christopher','Daniel','Matthew','Anthony','Mark','Steven',
              'Andrew','Joshua','Kevin','Brian','Jose','Luis','Ahmed','Wei','Raj','Omar',
              'Liam','Noah','Ethan','Lucas'] AS first_names,
        ARRAY['Smith','Johnson','Williams','Brown','Jones','Garcia','Miller','Davis',
              'Rodriguez','Martinez','Hernandez','Lopez','Gonzalez','Wilson','Anderson',
              'Thomas','Taylor','Moore','Jackson','Martin','Lee','Perez','Thompson','White',
              'Harris','Sanchez','Clark','Ramirez','Lewis','Robinson','Walker','Young',
              'Allen','King','Wright','Scott','Torres','Nguyen','Hill','Flores','Green',
              'Adams','Nelson','Baker','Hall','Rivera','Campbell','Mitchell','Carter',
              'Roberts','Patel','Kim','Chen','Singh','Cohen','O''Brien','Murphy',
              'Kowalski','Okafor','Yamamoto'] AS last_names,
        ARRAY['Maple','Oak','Pine','Cedar','Elm','Washington','Lake','Hill','Park','Main',
              'Church','Walnut','Spruce','Highland','Sunset','Willow','Chestnut','Franklin',
              'Jefferson','Lincoln'] AS streets,
        ARRAY['St','Ave','Rd','Ln','Dr','Ct','Blvd','Way'] AS suffixes,
        ARRAY['example.com','example.org','example.net'] AS domains
),
cities (idx, city, state, zip, area_code) AS (
    VALUES
        ( 0, 'Cambridge',      'MA', '02139', '617'),
        ( 1, 'Boston',         'MA', '02115', '617'),
        ( 2, 'Providence',     'RI', '02903', '401'),
        ( 3, 'Hartford',       'CT', '06103', '860'),
        ( 4, 'Newark',         'NJ', '07102', '973'),
        ( 5, 'Portland',       'ME', '04101', '207'),
        ( 6, 'Burlington',     'VT', '05401', '802'),
        ( 7, 'Manchester',     'NH', '03101', '603'),
        ( 8, 'New York',       'NY', '10001', '212'),
        ( 9, 'Philadelphia',   'PA', '19103', '215'),
        (10, 'Baltimore',      'MD', '21201', '410'),
        (11, 'Washington',     'DC', '20001', '202'),
        (12, 'Richmond',       'VA', '23219', '804'),
        (13, 'Charlotte',      'NC', '28202', '704'),
        (14, 'Atlanta',        'GA', '30303', '404'),
        (15, 'Miami',          'FL', '33130', '305'),
        (16, 'Nashville',      'TN', '37203', '615'),
        (17, 'Cleveland',      'OH', '44113', '216'),
        (18, 'Detroit',        'MI', '48226', '313'),
        (19, 'Chicago',        'IL', '60601', '312'),
        (20, 'Minneapolis',    'MN', '55401', '612'),
        (21, 'St. Louis',      'MO', '63101', '314'),
        (22, 'Houston',        'TX', '77002', '713'),
        (23, 'Austin',         'TX', '78701', '512'),
        (24, 'Denver',         'CO', '80202', '303'),
        (25, 'Phoenix',        'AZ', '85004', '602'),
        (26, 'Salt Lake City', 'UT', '84101', '801'),
        (27, 'Seattle',        'WA', '98101', '206'),
        (28, 'Portland',       'OR', '97204', '503'),
        (29, 'San Francisco',  'CA', '94103', '415'),
        (30, 'Los Angeles',    'CA', '90012', '213')
),
base AS (
    SELECT
        g.id,
        n.first_names[1 + pg_temp.h('p.first', g.id) % 60] AS first_name,
        (pg_temp.h('p.first', g.id) % 60) < 30               AS female_name,
        n.last_names[1 + pg_temp.h('p.last', g.id) % 60]  AS last_name,
        -- SSN: bijective affine map of (id-1) into area 100-665, group 10-99,
        -- serial 1000-9999 (566*90*9000 = 458,460,000 slots; multiplier 7^10 is
        -- coprime to that), so uniqueness holds by construction.
        ((g.id - 1)::bigint * 282475249 + 123456789) % 458460000 AS ssn_x,
        date '1930-01-01'
            + (pg_temp.h('p.dob', g.id) % (date '2020-12-31' - date '1930-01-01' + 1))::int
                                                             AS date_of_birth,
        pg_temp.h('p.city', g.id) % 31                       AS city_idx,
        pg_temp.h('p.phone', g.id) % 10000                   AS phone_line,
        pg_temp.h('p.addr', g.id)                            AS addr_h,
        pg_temp.h('p.ins', g.id)                             AS ins_h,
        n.streets, n.suffixes, n.domains
    FROM generate_series(1, 10000) AS g(id)
    CROSS JOIN names AS n
)
SELECT
    b.id,
    'MRN-' || lpad((b.id * 7919)::text, 8, '0'),
    b.first_name,
    b.last_name,
    lpad((100 + b.ssn_x / 810000)::text, 3, '0') || '-' ||
    lpad((10 + (b.ssn_x / 9000) % 90)::text, 2, '0') || '-' ||
    lpad((1000 + b.ssn_x % 9000)::text, 4, '0'),
    b.date_of_birth,
    CASE WHEN b.id % 53 = 0 THEN 'X' WHEN b.female_name THEN 'F' ELSE 'M' END,
    lower(regexp_replace(b.first_name, '[^A-Za-z]', '', 'g')) || '.' ||
    lower(regexp_replace(b.last_name,  '[^A-Za-z]', '', 'g')) || b.id::text || '@' ||
    b.domains[1 + b.id % 3],
    '(' || c.area_code || ') 555-' || lpad(b.phone_line::text, 4, '0'),
    (100 + b.addr_h % 9800)::text || ' ' ||
    b.streets[1 + (b.addr_h / 9800) % 20] || ' ' ||
    b.suffixes[1 + (b.addr_h / 196000) % 8] ||
    CASE WHEN b.id % 5 = 0
         THEN ', Apt ' || (1 + (b.addr_h / 1568000) % 12)::text
                       || chr(65 + ((b.addr_h / 18816000) % 4)::int)
         ELSE '' END,
    c.city,
    c.state,
    c.zip,
    'INS-' || chr(65 + (b.ins_h % 26)::int) || chr(65 + ((b.ins_h / 26) % 26)::int) ||
    lpad(((b.id::bigint * 654321) % 1000000)::text, 6, '0'),
    -- registered at the later of (2018-01-01 + 2h per id) and 09:00 UTC on the DOB
    greatest(timestamptz '2018-01-01 00:00:00+00'
                 + interval '2 hours' * b.id
                 + interval '1 minute' * (b.addr_h % 120),
             (b.date_of_birth + time '09:00') AT TIME ZONE 'UTC')
FROM base AS b
JOIN cities AS c ON c.idx = b.city_idx
ORDER BY b.id;

-- -----------------------------------------------------------------------------
-- encounters (30,000 = 3 visits per patient)
--   id = visit * 10000 + patient_id, visit in 0..2 (one visit per year 2021-2023)
-- -----------------------------------------------------------------------------
INSERT INTO public.encounters (id, patient_id, admitted_at, discharged_at, department_id,
                               diagnosis_code, attending, notes)
WITH
docs AS (
    SELECT
        ARRAY['Mary','Patricia','Jennifer','Linda','Elizabeth','Barbara','Susan','Jessica',
              'Sarah','Karen','Nancy','Lisa','Margaret','Sandra','Ashley','Emily','Donna',
              'Michelle','Carol','Amanda','Maria','Sofia','Aisha','Mei','Priya','Fatima',
              'Olivia','Emma','Chloe','Zoe',
              'James','John','Robert','Michael','William','David','Richard','Joseph',
              'Thomas','Charles','Christopher','Daniel','Matthew','Anthony','Mark','Steven',
              'Andrew','Joshua','Kevin','Brian','Jose','Luis','Ahmed','Wei','Raj','Omar',
              'Liam','Noah','Ethan','Lucas'] AS first_names,
        ARRAY['Smith','Johnson','Williams','Brown','Jones','Garcia','Miller','Davis',
              'Rodriguez','Martinez','Hernandez','Lopez','Gonzalez','Wilson','Anderson',
              'Thomas','Taylor','Moore','Jackson','Martin','Lee','Perez','Thompson','White',
              'Harris','Sanchez','Clark','Ramirez','Lewis','Robinson','Walker','Young',
              'Allen','King','Wright','Scott','Torres','Nguyen','Hill','Flores','Green',
              'Adams','Nelson','Baker','Hall','Rivera','Campbell','Mitchell','Carter',
              'Roberts','Patel','Kim','Chen','Singh','Cohen','O''Brien','Murphy',
              'Kowalski','Okafor','Yamamoto'] AS last_names
),
dx (idx, code, description, department_id) AS (
    VALUES
        ( 0, 'I10',      'essential hypertension',                2),
        ( 1, 'I50.9',    'heart failure',                         2),
        ( 2, 'I48.91',   'atrial fibrillation',                   2),
        ( 3, 'I21.4',    'NSTEMI',                                2),
        ( 4, 'E11.9',    'type 2 diabetes mellitus',              3),
        ( 5, 'E03.9',    'hypothyroidism',                        3),
        ( 6, 'E78.5',    'hyperlipidemia',                        3),
        ( 7, 'J45.909',  'asthma',                                4),
        ( 8, 'J44.1',    'COPD with acute exacerbation',          4),
        ( 9, 'J18.9',    'community-acquired pneumonia',          4),
        (10, 'K21.9',    'gastro-esophageal reflux disease',      5),
        (11, 'K35.80',   'acute appendicitis',                    5),
        (12, 'S72.001A', 'fracture of the right femoral neck',    6),
        (13, 'M54.50',   'low back pain',                         6),
        (14, 'M17.11',   'osteoarthritis of the right knee',      6),
        (15, 'G43.909',  'migraine',                              7),
        (16, 'I63.9',    'ischemic stroke',                       7),
        (17, 'F32.9',    'major depressive disorder',             8),
        (18, 'F41.1',    'generalized anxiety disorder',          8),
        (19, 'O80',      'uncomplicated delivery',                9),
        (20, 'N18.30',   'chronic kidney disease stage 3',       10),
        (21, 'N39.0',    'urinary tract infection',              11),
        (22, 'Z00.00',   'routine adult health examination',     11),
        (23, 'R07.9',    'chest pain',                            1),
        (24, 'R51.9',    'headache',                              1),
        (25, 'A09',      'infectious gastroenteritis',           12),
        (26, 'L03.115',  'cellulitis of the right lower limb',   12),
        (27, 'U07.1',    'COVID-19',                             12)
),
base AS (
    SELECT
        g.id,
        (g.id - 1) % 10000 + 1                   AS patient_id,
        (g.id - 1) / 10000                       AS visit,
        pg_temp.h('e.dx',    g.id) % 28          AS dx_raw,
        pg_temp.h('e.time',  g.id)               AS t_h,
        pg_temp.h('e.stay',  g.id)               AS s_h,
        pg_temp.h('e.doc',   g.id) % 40          AS doc_idx,
        pg_temp.h('e.note',  g.id)               AS n_h
    FROM generate_series(1, 30000) AS g(id)
),
enc AS (
    SELECT
        b.*,
        p.first_name || ' ' || p.last_name       AS full_name,
        p.phone,
        p.ssn,
        -- Obstetric code only for women of plausible age; otherwise a routine exam.
        CASE WHEN b.dx_raw = 19
                  AND NOT (p.sex = 'F' AND p.date_of_birth BETWEEN date '1975-01-01'
                                                               AND date '2004-12-31')
             THEN 22 ELSE b.dx_raw END           AS dx_idx,
        -- visit v is admitted during year 2021+v (minutes since 2021-01-04 00:00 UTC)
        timestamptz '2021-01-04 00:00:00+00'
            + interval '1 minute' * (b.visit * 525600 + b.t_h % 518400) AS admitted_at
    FROM base AS b
    JOIN public.patients AS p ON p.id = b.patient_id
)
SELECT
    e.id,
    e.patient_id,
    e.admitted_at,
    CASE WHEN e.visit = 2 AND e.s_h % 40 = 0 THEN NULL          -- still admitted
         ELSE e.admitted_at + interval '1 minute' * (240 + e.s_h % 20160) END,
    d.department_id,
    d.code,
    'Dr. ' || k.first_names[1 + (e.doc_idx * 7 + 3) % 60] || ' '
           || k.last_names[1 + (e.doc_idx * 11 + 17) % 60],
    -- clinical sentence (names the patient when id % 7 = 0)
    CASE e.n_h % 6
        WHEN 0 THEN s.subj || ' presented with ' || d.description || '. Vitals stable on arrival.'
        WHEN 1 THEN s.subj || ' admitted for evaluation of ' || d.description || '. Labs ordered.'
        WHEN 2 THEN 'Follow-up for ' || d.description || '. ' || s.subj
                    || ' reports improvement since last visit.'
        WHEN 3 THEN s.subj || ' seen for ' || d.description
                    || '; medication reviewed and adherence discussed.'
        WHEN 4 THEN 'Assessment: ' || d.description || '. Plan discussed with '
                    || s.obj || ' and family.'
        ELSE        'Discharge planning for ' || d.description || '. ' || s.subj
                    || ' to follow up in 2 weeks.'
    END
    -- phone sentence when id % 11 = 0
    || CASE WHEN e.id % 11 <> 0 THEN ''
            WHEN (e.n_h / 6) % 3 = 0 THEN ' ' || s.subj || ' called from ' || e.phone || ' about refill.'
            WHEN (e.n_h / 6) % 3 = 1 THEN ' Callback number on file: ' || e.phone || '.'
            ELSE ' Left voicemail at ' || e.phone || ' regarding lab results.'
       END
    -- SSN sentence when id % 13 = 0
    || CASE WHEN e.id % 13 <> 0 THEN ''
            WHEN (e.n_h / 18) % 2 = 0 THEN ' SSN ' || e.ssn || ' verified at registration.'
            ELSE ' Insurance claim submitted under SSN ' || e.ssn || '.'
       END
FROM enc AS e
JOIN dx AS d ON d.idx = e.dx_idx
CROSS JOIN docs AS k
CROSS JOIN LATERAL (
    SELECT CASE WHEN e.id % 7 = 0 THEN 'Patient ' || e.full_name ELSE 'Patient' END AS subj,
           CASE WHEN e.id % 7 = 0 THEN e.full_name ELSE 'the patient' END       AS obj
) AS s
ORDER BY e.id;

-- -----------------------------------------------------------------------------
-- prescriptions (20,000): one for every encounter whose id % 3 <> 0.
--   id = encounter_id - encounter_id / 3   (bijective onto 1..20000)
--   The drug is picked from a short list appropriate to the encounter diagnosis.
-- -----------------------------------------------------------------------------
INSERT INTO public.prescriptions (id, patient_id, encounter_id, drug, dose, prescribed_at)
WITH
drugs (idx, drug, dose) AS (
    VALUES
        ( 1, 'Lisinopril',           '10 mg once daily'),
        ( 2, 'Amlodipine',           '5 mg once daily'),
        ( 3, 'Hydrochlorothiazide',  '25 mg once daily'),
        ( 4, 'Furosemide',           '40 mg once daily'),
        ( 5, 'Metoprolol succinate', '25 mg once daily'),
        ( 6, 'Apixaban',             '5 mg twice daily'),
        ( 7, 'Aspirin',              '81 mg once daily'),
        ( 8, 'Atorvastatin',         '40 mg at bedtime'),
        ( 9, 'Metformin',            '500 mg twice daily'),
        (10, 'Insulin glargine',     '20 units at bedtime'),
        (11, 'Levothyroxine',        '50 mcg once daily'),
        (12, 'Albuterol inhaler',    '90 mcg 2 puffs every 4-6 h as needed'),
        (13, 'Montelukast',          '10 mg at bedtime'),
        (14, 'Prednisone',           '40 mg once daily for 5 days'),
        (15, 'Amoxicillin',          '500 mg three times daily for 10 days'),
        (16, 'Omeprazole',           '20 mg once daily'),
        (17, 'Ibuprofen',            '400 mg every 6 h as needed'),
        (18, 'Acetaminophen',        '650 mg every 6 h as needed'),
        (19, 'Gabapentin',           '300 mg three times daily'),
        (20, 'Sumatriptan',          '50 mg as needed for migraine'),
        (21, 'Sertraline',           '50 mg once daily'),
        (22, 'Escitalopram',         '10 mg once daily'),
        (23, 'Cephalexin',           '500 mg four times daily for 7 days'),
        (24, 'Nitrofurantoin',       '100 mg twice daily for 5 days'),
        (25, 'Ondansetron',          '4 mg every 8 h as needed'),
        (26, 'Prenatal vitamin',     '1 tablet once daily'),
        (27, 'Oxycodone',            '5 mg every 6 h as needed for 3 days'),
        (28, 'Nirmatrelvir/ritonavir','300/100 mg twice daily for 5 days')
),
dx_drugs (code, drug_ids) AS (
    VALUES
        ('I10',      ARRAY[1, 2, 3]),
        ('I50.9',    ARRAY[4, 5, 1]),
        ('I48.91',   ARRAY[6, 5]),
        ('I21.4',    ARRAY[7, 8, 5]),
        ('E11.9',    ARRAY[9, 10]),
        ('E03.9',    ARRAY[11]),
        ('E78.5',    ARRAY[8]),
        ('J45.909',  ARRAY[12, 13]),
        ('J44.1',    ARRAY[14, 12]),
        ('J18.9',    ARRAY[15]),
        ('K21.9',    ARRAY[16]),
        ('K35.80',   ARRAY[27, 18]),
        ('S72.001A', ARRAY[27, 18]),
        ('M54.50',   ARRAY[17, 18]),
        ('M17.11',   ARRAY[17, 18]),
        ('G43.909',  ARRAY[20, 17]),
        ('I63.9',    ARRAY[7, 8]),
        ('F32.9',    ARRAY[21, 22]),
        ('F41.1',    ARRAY[22, 21]),
        ('O80',      ARRAY[26, 17]),
        ('N18.30',   ARRAY[4, 1]),
        ('N39.0',    ARRAY[24, 23]),
        ('Z00.00',   ARRAY[8, 7, 1]),
        ('R07.9',    ARRAY[7, 16]),
        ('R51.9',    ARRAY[18, 17]),
        ('A09',      ARRAY[25]),
        ('L03.115',  ARRAY[23]),
        ('U07.1',    ARRAY[28, 18])
)
SELECT
    e.id - e.id / 3,
    e.patient_id,
    e.id,
    dr.drug,
    dr.dose,
    e.admitted_at + interval '1 minute' * (30 + pg_temp.h('rx.time', e.id) % 210)
FROM public.encounters AS e
JOIN dx_drugs AS x ON x.code = e.diagnosis_code
JOIN drugs AS dr
  ON dr.idx = x.drug_ids[1 + (pg_temp.h('rx.drug', e.id) % cardinality(x.drug_ids))::int]
WHERE e.id % 3 <> 0
ORDER BY e.id;

-- -----------------------------------------------------------------------------
-- lab_results (40,000 = 4 distinct tests per patient)
--   id = k * 10000 + patient_id, k in 0..3; test = (k + patient_id) % 6
-- -----------------------------------------------------------------------------
INSERT INTO public.lab_results (id, patient_id, test, value, unit, taken_at)
WITH
tests (idx, test, unit, lo, hi, decimals) AS (
    VALUES
        (0, 'HbA1c',      '%',      4.5,  11.0, 1),
        (1, 'LDL',        'mg/dL',  50,   220,  0),
        (2, 'Glucose',    'mg/dL',  65,   300,  0),
        (3, 'Hemoglobin', 'g/dL',   8.0,  17.5, 1),
        (4, 'Creatinine', 'mg/dL',  0.50, 3.50, 2),
        (5, 'TSH',        'mIU/L',  0.20, 8.00, 2)
),
base AS (
    SELECT
        g.id,
        (g.id - 1) % 10000 + 1 AS patient_id,
        (g.id - 1) / 10000     AS k
    FROM generate_series(1, 40000) AS g(id)
)
SELECT
    b.id,
    b.patient_id,
    t.test,
    round(t.lo + (t.hi - t.lo) * (pg_temp.h('lab.val', b.id) % 100001) / 100000.0,
          t.decimals),
    t.unit,
    -- draw k happens in the k-th ~9-month window starting 2021-02-01 06:00 UTC
    timestamptz '2021-02-01 06:00:00+00'
        + interval '1 minute' * (b.k * 388800 + pg_temp.h('lab.time', b.id) % 345600)
FROM base AS b
JOIN tests AS t ON t.idx = (b.k + b.patient_id) % 6
ORDER BY b.id;

-- -----------------------------------------------------------------------------
-- Indexes on patient_id (and other FK) columns
-- -----------------------------------------------------------------------------
CREATE INDEX encounters_patient_id_idx       ON public.encounters (patient_id);
CREATE INDEX encounters_department_id_idx    ON public.encounters (department_id);
CREATE INDEX prescriptions_patient_id_idx    ON public.prescriptions (patient_id);
CREATE INDEX prescriptions_encounter_id_idx  ON public.prescriptions (encounter_id);
CREATE INDEX lab_results_patient_id_idx      ON public.lab_results (patient_id);

DROP FUNCTION pg_temp.h(text, bigint);

ANALYZE;
