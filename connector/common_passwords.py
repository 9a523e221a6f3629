"""The commonest passwords (the top of the public breach corpora: RockYou, the annual
"worst passwords" lists, SecLists' top-1000), lower case, as password rules compare them.

Most are shorter than the minimum length; they are here because
:mod:`connector.password_rules` also refuses a common word padded with digits or
symbols (``Password2024!``, ``qwerty123456``, ``iloveyou!!!!``).
"""

from __future__ import annotations

_WORDS = """
123456 password 123456789 12345678 12345 qwerty 1234567 111111 1234567890 123123 abc123
1234 password1 iloveyou 1q2w3e4r 000000 qwerty123 zaq12wsx dragon sunshine princess
letmein 654321 monkey 27653 1qaz2wsx 123321 qwertyuiop superman asdfghjkl 666666 121212
football baseball welcome admin administrator login master hello freedom whatever
qazwsx trustno1 starwars passw0rd p@ssw0rd p@ssword pa55word password123 password12
password1234 shadow michael jennifer hunter ashley charlie jordan michelle daniel
jessica thomas robert matthew andrew joshua george summer winter spring autumn
secret secret123 changeme changeit default guest test test123 testing root toor
access flower hottie lovely loveme love jesus christ god blessed angel angels
batman soccer hockey killer pepper ginger cheese butter cookie chocolate banana
orange apple computer internet samsung google yahoo facebook myspace linkedin
mustang ferrari porsche corvette harley yamaha honda toyota nissan mercedes
123qwe qwe123 1qazxsw2 zxcvbnm zxcvbn asdf asdfgh asdfasdf qwer qwerasdf 1q2w3e
1q2w3e4r5t 1q2w3e4r5t6y q1w2e3r4 a1b2c3 abcd1234 abcdef abcdefg abc abcabc aaaaaa
777777 888888 999999 555555 222222 333333 444444 987654321 9876543210 112233 159753
147258369 123654 789456 456789 11111111 00000000 12341234 123123123 1111111111
696969 131313 232323 7777777 55555 11111 qwerty1 qwerty12 qwertyu qwertz azerty
princess1 sunshine1 iloveyou1 monkey1 dragon1 master1 football1 baseball1 superman1
nicole daniel1 babygirl babygirl1 lovely1 rockyou tigger tigger1 purple purple1
anthony william elizabeth samantha amanda melissa stephanie chelsea justin austin
taylor hannah madison maggie buster biteme fuckyou fuckoff asshole bitch
sexy pussy dallas yankees lakers arsenal liverpool chelsea1 manchester barcelona
qwertyuiop123 1234qwer qwer1234 zaq1xsw2 xsw2zaq1 password! password@ welcome1
welcome123 admin123 admin1 administrator1 root123 letmein1 letmein123 trustno11
hello123 hello1 iloveu iloveyou2 mylove lovelove loveyou forever friends family
computer1 internet1 matrix hacker security pass pass123 pass1234 passpass passwd
mypassword mypass yourpassword nopassword thepassword newpassword oldpassword
temp temp123 temppass temporary demo demo123 user user123 username guest123
office work company business manager support service server database system
oracle mysql postgres sql server1 network cisco linux ubuntu windows microsoft
apple123 iphone android samsung1 nokia blackberry
qwerty1234 qwerty12345 qwerty123456 asdf1234 zxcv1234 1qaz2wsx3edc 1qaz@wsx
q1w2e3r4t5 q1w2e3r4t5y6 zaq123 zaq1zaq1 !qaz2wsx 1qaz!qaz
starwars1 pokemon naruto dragonball minecraft fortnite roblox pikachu
jordan23 michael1 jessica1 charlie1 thomas1 ashley1 hunter2 hunter1 shadow1
football12 baseball12 soccer1 hockey1 basketball tennis golfer golf
summer2024 winter2024 spring2024 autumn2024 summer2025 winter2025 spring2025
summer2026 winter2026 spring2026 january february march april may june july
august september october november december monday tuesday wednesday thursday
friday saturday sunday
peersync peer support peersupport recovery wellness health healthcare hospital
clinic clinical doctor nurse patient therapy counseling counselor agency
"""
COMMON_PASSWORDS: frozenset[str] = frozenset(_WORDS.split())
