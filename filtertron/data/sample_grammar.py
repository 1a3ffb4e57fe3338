"""Grammar of the sample corpus: article kinds, section templates and word lists.

All text here was written for filtertron (no third-party text), so the generated corpus is
license-clean. Templates are already in WikiText tokenization (punctuation split off by
spaces, ``@-@`` / ``@,@`` / ``@.@`` inside words and numbers). Template syntax, rendered by
:mod:`filtertron.data.sample`:

- ``{slot}``: a value; fixed for the whole article if the kind's ``context`` names it,
  otherwise drawn afresh from the generator or word list of the same name.
- ``<a|b|c>``: one alternative, chosen uniformly; alternatives may contain slots and
  ``[...]``. Plain parentheses are literal text, as in WikiText's `` ( 12 mi ) ``.
- ``[text]``: optional text, kept half of the time.

An article kind has a ``title`` template; a ``context`` of ``slot=generator`` pairs drawn
once per article, then ``derived`` slots rendered from templates over them; ``intro``
templates (the lead paragraph, in order); and ``sections`` of ``(heading, subheadings,
templates)``, a section with subheadings being sometimes split into level-3 subsections as
WikiText articles are. Template blocks hold one template per line; an indented line
continues the one before it. Word lists are ``name: word | word | ...`` lines; earlier words
are drawn more often (Zipf-like weights).
"""

SETTLEMENT = {
    "title": "{T}",
    "context": "T=place region=region country=country river=river founder=person"
    " founded=year pop=bignum industry=industry crop=crop building=building",
    "intro": """
{T} is a <town|village|small town|market town|city> in {region} , {country} .
It lies on the <north|south|east|west> bank of the {river} ,
    about {num} kilometres ( {num} mi ) from {place} .
At the {year} census the <town|parish> had a population of {pop} .
The town is known for its {industry} and its <old|historic|large|wooden> {building} .
The name {T} is <thought|believed|said> to come from an old word for a
    <ford|hill|meadow|clearing|harbour|marsh> .
""",
    "sections": [
        (
            "History",
            ["Early history", "Modern history"],
            """
The <area|site> was first settled in the {century} century .
{T} was <founded|established> in {founded} by {founder} , a
    <merchant|farmer|priest|landowner|soldier> from {place} .
In {year} the town <was granted|received> a <market charter|royal charter> .
During the {war} , {T} was <occupied|besieged|damaged|used as a supply base> .
A <fire|flood|storm|plague> in {year} <destroyed|damaged> <much|most|part> of the
    <town|old town|harbour|market> .
The railway reached {T} in {year} , and the population <grew|rose> <rapidly|quickly|steadily> .
{founder} <built|paid for> the first <church|school|mill|bridge> in the town .
By the end of the {century} century the town had {num} <shops|mills|inns|schools> .
<In {year} the|The> old {building} was <rebuilt|restored|enlarged> .
""",
        ),
        (
            "Geography",
            ["Climate"],
            """
{T} <lies|stands> on the {river} , at an elevation of {num} metres ( {num} ft ) .
The <town|parish> covers an area of {dec} square kilometres .
The surrounding <land|countryside> is <mostly|largely> <farmland|forest|moorland|marsh|hills> .
The climate is <mild|temperate|oceanic|continental> , with <cool|warm|dry|wet> summers and
    <cold|mild|wet> winters .
The highest point in the <parish|area> is {place} Hill , which rises to {num} metres .
<Several|Two|Three> small <streams|brooks> flow into the {river} near the town .
The average annual rainfall is {num} millimetres .
""",
        ),
        (
            "Demographics",
            [],
            """
At the {year} census , {T} had a population of {pop} , in {bignum} households .
The population has <grown|fallen|risen> <slowly|steadily|sharply> since {year} .
About {num} per cent of the <residents|population> were born outside {country} .
The median age of the population is {num} years .
<Most|Many> of the people <work|live> in the <centre|old town|new suburbs> .
""",
        ),
        (
            "Economy",
            [],
            """
The <local|main> economy <is based on|depends on> {industry} and the growing of {crop} .
A weekly market has been held in the town since {year} .
The largest employer is a {industry} <company|works|factory> <founded|opened> in {year} .
Tourism is an important source of income , <especially|mainly> in summer .
<Many|Some> residents <work|commute> in {place} <and|or> {place} .
The growing of {crop} <declined|grew> <after|during> the {war} .
""",
        ),
        (
            "Transport",
            [],
            """
{T} railway station is on the line from {place} to {place} .
The <A|B>{num} road <passes through|runs near|bypasses> the town .
Buses <run|connect the town> to {place} and {place} .
The nearest airport is at {place} , about {num} kilometres away .
""",
        ),
        (
            "Culture",
            [],
            """
The town has a <library|museum|theatre|football club|choir> <founded|opened> in {year} .
An annual {festival} festival is held each <spring|summer|autumn|winter> .
The parish church of St {given} dates from the {century} century .
{T} is twinned with {place} in {country} .
""",
        ),
    ],
}

RIVER = {
    "title": "{T} River",
    "context": "T=name region=region country=country source=place mouth=place sea=sea"
    " town=place length=num3",
    "intro": """
The {T} River is a river in {region} , {country} .
It rises <near|at> {source} and flows <north|south|east|west> for {length} kilometres ( {num}
    mi ) to the {sea} .
The {T} is the <longest|second longest|largest> river in {region} .
The river 's name <comes|is thought to come> from an old word meaning "
    <white|slow|clear|cold|wide> water " .
""",
    "sections": [
        (
            "Course",
            ["Upper course", "Lower course"],
            """
From its source at {source} , the river flows <through|past> {place} and {place} .
<Below|Downstream of> {town} the valley <widens|narrows|becomes deeper> .
The {T} is joined by the {name} <River|Brook|Water> <at|near> {place} .
The river <enters|flows into> the {sea} <at|near> {mouth} .
<Several|Many> <weirs|bridges|mills|locks> <stand|were built> along its course .
The river marks part of the <border|boundary> between {region} and {country} .
""",
        ),
        (
            "Hydrology",
            [],
            """
The mean discharge at {town} is {dec} cubic metres per second .
The catchment covers an area of {bignum} square kilometres .
<Floods|Serious floods|Major floods> were recorded in {year} and {year} .
The flow is highest in <spring|winter> and lowest in <late summer|autumn> .
""",
        ),
        (
            "History",
            [],
            """
The river was <used|important> for <trade|transport|fishing|milling> from the {century} century .
A canal <linking|connecting> the {T} with {place} was <built|opened> in {year} .
The first bridge at {town} was built in {year} .
In {year} a <dam|reservoir|weir> was built <at|near> {place} .
{person} <surveyed|mapped|described> the river in {year} .
""",
        ),
        (
            "Ecology",
            [],
            """
The river <supports|is home to> <populations|many species> of {fish} and {fish} .
<Otters|Herons|Kingfishers|Beavers> <are|were once> <common|found> along its banks .
Water quality <improved|declined> <after|during> the {war} .
<Parts of the valley are|Much of the valley is> <protected|a nature reserve> .
""",
        ),
    ],
}

SPECIES = {
    "title": "{T}",
    "context": "T=binomial animal=animal family=family describer=person dyear=year"
    " region=region country=country habitat=habitat food=food",
    "derived": {"common": "{colour} @-@ <backed|tailed|winged|headed|throated> {animal}"},
    "intro": """
{T} , <also known as|commonly called> the {common} , is a species of {animal} in the family
    {family} .
It is <found|native|endemic> <in|to> {region} and {country} .
The species was first described by {describer} in {dyear} .
Its natural habitat is {habitat} .
It is <threatened|not threatened> by habitat loss .
""",
    "sections": [
        (
            "Taxonomy",
            [],
            """
{describer} <described|named> the species in {dyear} from <a specimen|specimens> collected
    <near|at> {place} .
The species name means " {meaning} " .
It is placed in the genus together with {num} other species .
<Two|Three|Several> subspecies are <recognised|known> .
""",
        ),
        (
            "Description",
            [],
            """
Adults <are|reach> {num} <millimetres|centimetres> <long|in length> .
The {bodypart} <is|are> {colour} with {colour} <spots|stripes|markings|bands> .
<Males are larger than females|Females are larger than males|Males are brighter than
    females|The sexes are alike> .
The {bodypart} <is|are> <long|short|narrow|broad|rounded> and <slightly|strongly>
    <curved|pointed|flattened> .
Young <animals|individuals> are <paler|darker|duller> than adults .
The {common} can be told apart from similar species by its {colour} {bodypart} .
""",
        ),
        (
            "Distribution and habitat",
            [],
            """
The species <occurs|is found|lives> in {habitat} at elevations of {num} to {bignum} metres .
Its range extends from {place} to {place} .
It <prefers|favours> {habitat} near <water|rivers|streams|the coast> .
""",
        ),
        (
            "Behaviour",
            ["Feeding", "Breeding"],
            """
The {common} feeds <mainly|mostly|chiefly> on {food} and {food} .
Breeding takes place <between|from> {month} <and|to> {month} .
The female lays {num} eggs .
It is <mostly|mainly> <nocturnal|active by day|solitary|found in small groups> .
""",
        ),
        (
            "Conservation",
            [],
            """
The species is <listed|assessed> as <least concern|near threatened|vulnerable|endangered> .
Its main threat is <habitat loss|pollution|farming|logging> .
<The population|Numbers> <is|are> <thought|believed> to be <stable|declining|increasing> .
""",
        ),
    ],
}

MUSICIAN = {
    "title": "{T}",
    "context": "T=person Pron=pron home=place country=country byear=year"
    " instrument=instrument genre=genre band=band label=label album=album",
    "intro": """
{T} ( born {day} {month} {byear} ) is a <singer|musician|songwriter|guitarist|pianist|composer>
    from {home} , {country} .
{T} is best known for <work with|the album> <the band {band}|{album}> .
{Pron} has released {num} studio albums on {label} .
Critics have described the music as {genre} with <elements|influences> of {genre} .
""",
    "sections": [
        (
            "Early life",
            [],
            """
{T} was born in {home} in {byear} , the <eldest|youngest|second> of {num} children .
The family <moved|returned> to {place} in {year} .
{Pron} <began|started> <playing|learning> the {instrument} at the age of {num} .
After leaving school , {T} <moved|went> to {place} to study <music|law|art|engineering> .
""",
        ),
        (
            "Career",
            ["Early career", "Solo career"],
            """
In {year} {T} <joined|formed> {band} with {person} .
The band released <its|a> <first|debut> album , {album} , in {year} .
The <first|debut> solo album , {album} , was released on {label} in {year} .
The album <reached|peaked at> number {num} on the {country} <chart|album chart> .
In {year} , {band} toured <across|throughout> {country} with {person} .
{T} <left|returned to> {band} in {year} .
A <second|third|live> album , {album} , <followed|appeared> in {year} .
""",
        ),
        (
            "Musical style",
            [],
            """
The <music|style|sound> <draws on|combines> {genre} and {genre} .
Critics have compared the <voice|playing> of {T} to that of {person} .
{Pron} plays the {instrument} and the {instrument} .
""",
        ),
        (
            "Personal life",
            [],
            """
{T} <lives|has lived> in {place} <since {year}|> .
{Pron} married {person} in {year} .
""",
        ),
    ],
}

SHIP = {
    "title": "SS {T}",
    "context": "T=name owner=owner launched=year yard=yard tons=bignum country=country",
    "intro": """
SS {T} was a <cargo ship|passenger ship|steamship|cruiser|gunboat|sailing ship> launched in
    {launched} for the {owner} .
The ship served on routes between {place} and {place} .
<She|The ship> was <sunk|wrecked|scrapped|sold> in {year} .
""",
    "sections": [
        (
            "Design and description",
            [],
            """
SS {T} was {num3} feet ( {num} m ) long , with a beam of {dec} metres .
The ship had a gross register tonnage of {tons} .
<She|The ship> was powered by <a|two> <steam engines|diesel engines|triple expansion
    engines|steam turbines> driving <a single screw|two screws> .
<Her|The ship 's> top speed was {num} knots ( {num} km/h ) .
<She|The ship> carried a crew of {num} <officers and men|men|sailors> .
The armament consisted of {num} {gun} guns .
""",
        ),
        (
            "Construction",
            [],
            """
SS {T} was built by {yard} in {launched} .
The ship was launched on {day} {month} {launched} and completed in {month} .
<Her|The> design was based on that of SS {name} .
""",
        ),
        (
            "Service history",
            ["Civil service", "War service"],
            """
On her <first|maiden> voyage she sailed from {place} to {place} .
In {year} the ship was <chartered|sold|renamed> by the {owner} .
During the {war} she served as a <transport|troopship|hospital ship|minelayer> .
Captain {person} took command in {year} .
<She|The ship> <ran aground near|collided with a ship off> {place} in {year} .
She <carried|brought> {bignum} <passengers|tons of cargo> in {year} .
""",
        ),
        (
            "Fate",
            [],
            """
SS {T} was <sunk by a mine|torpedoed|wrecked in a storm|broken up> <off|near> {place} in {year} .
<All|Most> of the crew <survived|were rescued|were lost> .
The wreck lies in {num} metres of water .
""",
        ),
    ],
}

BATTLE = {
    "title": "Battle of {site}",
    "context": "site=place side1=country side2=country lead1=person lead2=person"
    " byear=year war=war",
    "intro": """
The Battle of {site} was fought on {day} {month} {byear} between the forces of {side1} and
    {side2} during the {war} .
It ended in a <decisive|narrow|costly|clear> victory for {side1} .
About {bignum} <soldiers|men|troops> took part .
""",
    "sections": [
        (
            "Background",
            [],
            """
By {byear} the {war} had gone on for {num} years .
{lead1} <planned|hoped> to <capture|hold|relieve> {place} before the winter .
The army of {side2} under {lead2} was camped <near|at> {site} .
Both sides had <lost|gained> ground in the <spring|summer> of {byear} .
""",
        ),
        (
            "Battle",
            ["Morning", "Afternoon"],
            """
The fighting began <at dawn|early in the morning|in the afternoon> on {day} {month} .
{lead1} sent the <cavalry|infantry|artillery|left wing|right wing> <forward|across the river> .
The line of {side2} <held|broke|gave way> after {num} hours of fighting .
<Heavy rain|Fog|Snow> <slowed|delayed> the <advance|attack> .
{lead2} <ordered|led> a <counter attack|charge> against the <centre|flank> .
""",
        ),
        (
            "Aftermath",
            [],
            """
{side1} lost {bignum} <men|dead and wounded> , while {side2} lost {bignum} .
{lead2} <withdrew|fell back> to {place} .
The battle was followed by <a truce|a peace treaty|the siege of {place}> in {year} .
A <memorial|monument> was <built|unveiled> at {site} in {year} .
""",
        ),
    ],
}

WORDS_TEXT = """
industry: farming | fishing | brewing | weaving | mining | shipbuilding | tanning | printing |
    pottery | glassmaking | paper making | clock making | salt production | boat building |
    quarrying
crop: wheat | barley | potatoes | oats | apples | hops | sugar beet | grapes | flax | rye |
    cherries | cabbages | onions | pears | beans
building: church | castle | town hall | market hall | bridge | mill | abbey | tower | harbour |
    manor house | windmill | chapel | library
festival: music | harvest | folk | film | flower | boat | beer | cheese | lantern | poetry |
    jazz | horse
habitat: dry forest | wet grassland | rocky coast | mountain streams | lowland rain forest |
    sandy heath | freshwater marshes | open woodland | river banks | high meadows | shallow
    lakes | scrub | peat bogs
food: insects | seeds | small fish | worms | snails | fruit | leaves | beetles | spiders |
    grasses | nectar | frogs | larvae | berries
fish: trout | salmon | pike | eel | perch | carp | roach | bream | grayling | chub | barbel | minnow
bodypart: head | back | tail | wings | legs | belly | throat | crown | bill | shell | fins |
    eyes | neck | breast | antennae
colour: brown | black | white | grey | red | yellow | green | orange | blue | pale brown | dark
    grey | olive | buff | chestnut | cream | pink
animal: bird | beetle | moth | frog | snail | lizard | fish | spider | butterfly | bat | snake
    | crab | dragonfly | mouse
instrument: guitar | piano | violin | drums | bass | trumpet | organ | saxophone | cello |
    flute | harp | accordion | clarinet
genre: rock | folk | pop | jazz | blues | soul | country | punk | electronic music | hip hop |
    classical music | gospel | metal | reggae
gun: 4 @-@ inch | 6 @-@ inch | 12 @-@ pounder | 3 @-@ pounder | 47 mm | 76 mm | 5 @.@ 5 @-@
    inch | machine
pron: He | She | He | She | They
month: January | February | March | April | May | June | July | August | September | October |
    November | December
century: 12th | 13th | 14th | 15th | 16th | 17th | 18th | 19th | 11th | 10th
sea: North Sea | Grey Sea | Inner Sea | White Sea | Eastern Sea | Long Bay | Cold Sea |
    Southern Ocean | Narrow Sea | Outer Bay
"""

EPITHETS_TEXT = """
rubra = red | alba = white | nigra = black | minor = smaller | major = larger | montana = of
    the mountains | sylvestris = of the woods | maritima = of the sea | borealis = northern |
    australis = southern | gracilis = slender | robusta = stout | longicauda = long tail |
    brevipes = short foot | fluviatilis = of rivers | viridis = green | flava = yellow |
    maculata = spotted | striata = striped | nana = dwarf | palustris = of the marsh |
    orientalis = eastern | occidentalis = western | hirsuta = hairy | elegans = elegant
"""
ONSETS = "b br c d dr f g gr h k l m n p r s st t tr v w th sh kl sk j z fl".split(" ")
VOWELS = "a e i o u ae ei ou ia y oa ee".split(" ")
CODAS = " n r l s th nd rk m st x ck nt ll sk".split(" ")
PLACE_ENDINGS = (
    "ton by ford holm wick stad mere dale burg vik ley field moor port more haven".split()
)
PLACE_ENDINGS += ["stow", "ness"]
REGION_ENDINGS = "ia land shire mark or ova ania".split(" ")
GENUS_ENDINGS = "us a is ops ella odon ia ura".split(" ")


def lines(block: str) -> list[str]:
    """Templates of a block: one per line, indented lines continuing the previous one."""
    out: list[str] = []
    for line in block.strip("\n").split("\n"):
        if line.startswith(" ") and out:
            out[-1] += " " + line.strip()
        elif line.strip():
            out.append(line.strip())
    return out


def _lists(block: str) -> dict[str, list[str]]:
    return {
        k.strip(): [w.strip() for w in v.split("|")]
        for k, v in (line.split(":", 1) for line in lines(block))
    }


KINDS = {
    "settlement": SETTLEMENT,
    "river": RIVER,
    "species": SPECIES,
    "musician": MUSICIAN,
    "ship": SHIP,
    "battle": BATTLE,
}
KIND_WEIGHTS = {"settlement": 5, "river": 2, "species": 4, "musician": 3, "ship": 2, "battle": 2}
WORDS = _lists(WORDS_TEXT)
EPITHETS = [
    tuple(p.strip() for p in pair.split("=")) for pair in lines(EPITHETS_TEXT)[0].split("|")
]
FAMILY_ENDING = "idae"
